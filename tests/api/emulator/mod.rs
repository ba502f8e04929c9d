//! The emulator, driven over real HTTP: every rule of shared/box-api.md, the fault plan, the SDK.
mod faults;
pub mod helpers;
mod rules_commit;
mod rules_direct;
mod rules_file_fields;
mod rules_folders;
mod rules_items;
mod rules_metadata;
mod rules_parts;
mod rules_sessions;
mod rules_token;
mod sdk;
mod throughput;
