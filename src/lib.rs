//! box-upload-gateway: streams plain HTTP uploads into Box upload sessions.
//!
//! `pipeline`, `scan` and `box_api` are free of HTTP-server types; `routes` are thin actix-web handlers.
pub mod access;
pub mod box_api;
pub mod config;
pub mod emulator;
pub mod error;
pub mod events;
pub mod http_client;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod readiness;
pub mod routes;
pub mod scan;
pub mod secret;
pub mod startup;
pub mod state;
pub mod telemetry;
