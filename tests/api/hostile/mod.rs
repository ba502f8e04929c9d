//! The gateway against hostile and unlucky clients and a Box (or a proxy) that answers strangely:
//! memory, time and disk stay bounded, nothing panics, and every upload lands whole or fails visibly.
mod box_answers;
mod memory;
mod slow_clients;

pub(crate) use memory::status_bytes;
