//! The worker protocol (SPEC §5): the messages the server and its Python worker
//! exchange, and the newline-delimited JSON framing they travel in.
//!
//! Two channels carry them: the **control** channel (the worker's original
//! stdin/stdout) and one Unix **slot** socket per concurrent run. Both sides use
//! these types, so a change here is a protocol change: bump [`PROTOCOL_VERSION`].
//! A value travels in a slot frame one of three ways ([`Carrier`]): inline,
//! or, too large for one frame, in an open file attached to the frame
//! ([`attach`]: a sealed memory file) or in a spill file it names.

mod attach;
mod codec;
mod messages;
mod value;

pub use attach::{
    is_sealed, memory_file, seal, send_with_file, spill, write_with_file, FileReceiver, SEALS,
};

pub use codec::{encode_line, FrameError, FrameReader, LineDecoder, MAX_FRAME_BYTES};
pub use messages::{
    BatchSettings, ControlRequest, ControlResponse, FileOutput, HealthcheckStatus, LogSource,
    MetricMode, Mode, SlotRequest, SlotResponse, PROTOCOL_VERSION,
};
pub use value::{Carrier, OutputValue};
