//! VDI device sets in tokio.
//!
//! This crate will wrap any `vdi-core` client implementation for async code: sets and devices as
//! async values, commands as a `futures::Stream` that many tasks consume, byte streams in stream
//! order, and exactly-once completion. It adds no protocol logic. It is filled by its own issue.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
