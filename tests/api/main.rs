//! One integration binary: every test talks HTTP to servers spawned on port 0.
mod emulator;
mod fuzz;
mod gateway_auth;
mod gateway_clients;
mod gateway_conflicts;
mod gateway_edge;
mod gateway_faults;
mod gateway_idempotency;
mod gateway_lost_answers;
mod gateway_process;
mod gateway_ready;
mod gateway_sizes;
pub mod helpers;
mod hostile;
pub mod python;
mod soak;
mod tus;
mod tus_honesty;
