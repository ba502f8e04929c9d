//! One integration binary: every test talks HTTP to servers spawned on port 0.
mod emulator;
pub mod python;
