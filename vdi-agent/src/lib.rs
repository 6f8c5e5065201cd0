//! The VDI backup agent's on-disk backup format: a backup is a directory holding one stripe file
//! per VDI device ([`stripe`]: a self-describing, streamable sequence of checksummed records
//! with checkpoints at every durability point) and a `manifest.json` ([`manifest`]) that records
//! the backup's configuration, its state, and each stripe's totals at its last acknowledged
//! checkpoint.

#![forbid(unsafe_code)]

pub mod manifest;
pub mod stripe;
