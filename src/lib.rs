//! box-upload-gateway: streams plain HTTP uploads into Box upload sessions.
//!
//! `pipeline` and `box_api` are free of HTTP-server types; `routes` are thin actix-web handlers.
pub mod emulator;
