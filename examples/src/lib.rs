//! Examples of the vdi crates; run them with `cargo run -p examples --example NAME` (the list is
//! in `examples/README.md`).
//!
//! The library holds the one thing the client examples share and that is not part of a VDI
//! client: [`engine`], which runs the reference engine (`vdi-engine`, standing in for SQL
//! Server) in a child process.

#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod engine;

/// The error type of the examples: any error, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
