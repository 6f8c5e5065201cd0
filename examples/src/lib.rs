//! Examples of the vdi crates; run them with `cargo run -p examples --example NAME` (the list is
//! in `examples/README.md`).
//!
//! The library holds what the client examples share: [`engine`], which runs the reference engine
//! (`vdi-engine`, standing in for SQL Server) in a child process, and [`stripe_file`], one
//! device's command loop on a file of its own.

#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod engine;
#[cfg(target_os = "linux")]
pub mod stripe_file;

/// The error type of the examples: any error, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
