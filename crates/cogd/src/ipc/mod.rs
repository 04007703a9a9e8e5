//! The worker protocol (SPEC §5): the messages the server and its Python worker
//! exchange, and the newline-delimited JSON framing they travel in.
//!
//! Two channels carry them: the **control** channel (the worker's original
//! stdin/stdout) and one Unix **slot** socket per concurrent run. Both sides use
//! these types, so a change here is a protocol change: bump [`PROTOCOL_VERSION`].
//! A slot frame may carry an open file ([`attach`]): a large input or
//! output, as a sealed memory file.

mod attach;
mod codec;
mod messages;

pub use attach::{
    is_sealed, memory_file, seal, send_with_file, spill, write_with_file, FileReceiver, Spill,
    SEALS,
};

pub use codec::{encode_line, FrameError, FrameReader, LineDecoder, MAX_FRAME_BYTES};
pub use messages::{
    BatchSettings, ControlRequest, ControlResponse, FileOutput, HealthcheckStatus, LogSource,
    MetricMode, Mode, SlotRequest, SlotResponse, PROTOCOL_VERSION,
};
