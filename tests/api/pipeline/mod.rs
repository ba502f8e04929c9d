//! The framework-free pipeline's upload by path and fields that land with a file (issue 25), with
//! the real Box client against the real emulator over loopback: the calls the routes make.
mod fields;
pub mod helpers;
mod paths;
