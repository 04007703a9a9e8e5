//! cogd: a Cog-compatible prediction server.
//!
//! The server half ([`cli`], [`server`], and the modules they use) runs the
//! HTTP API and supervises a Python worker process; the [`worker`] module is the
//! worker's half, run inside that process by the `cogd._native` extension. See
//! `docs/architecture.md` for the map.

pub mod api;
#[cfg(test)]
mod arbitrary;
pub mod cli;
pub mod config;
pub mod custom_metrics;
pub mod files;
pub mod ipc;
pub mod json;
pub mod logs;
mod nudge;
pub mod outbound;
pub mod prediction;
pub mod queue;
pub mod run_once;
pub mod schema;
pub mod server;
pub mod service;
pub mod supervisor;
pub mod telemetry;
pub mod webhook;
pub mod worker;

/// The cogd version, reported by `/` and `/health-check`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
