//! What several test files need, one copy each: the app and its options, the gateway as a process,
//! Redis, a tus client, API keys, HTTP helpers, files, fault plans, polling, the Python venv, a
//! webhook receiver, clamd.
pub mod app;
pub mod clamd;
pub mod faults;
pub mod files;
pub mod http;
pub mod keys;
pub mod knobs;
pub mod process;
pub mod python;
pub mod redis_server;
pub mod tus_client;
pub mod wait;
pub mod webhook_receiver;

pub use app::*;
pub use faults::plan;
pub use files::*;
pub use http::*;
pub use keys::*;
pub use knobs::env_or;
pub use wait::{eventually, eventually_every, holds_within};
