//! Both sides of a VDI device set over shared memory.
//!
//! This crate will hold the shared-memory backend: the client (`CreateEx`, `GetCommand`, ...)
//! and the server (`Open`, `BeginConfiguration`, `SendCommand`, ...) of `vdi-core`'s traits,
//! across processes, with an aligned, pre-faulted buffer pool, a handle table, per-device command
//! rings and cross-process waits. It is filled by its own issue.

#![warn(missing_docs, missing_debug_implementations)]
