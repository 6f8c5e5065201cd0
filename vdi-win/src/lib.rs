//! Windows: the COM binding to Microsoft's sqlvdi.dll and the Windows platform layer of vdi-shm.
//!
//! This crate will hold the `IClientVirtualDeviceSet2` and `IClientVirtualDevice` interfaces
//! with their exact vtables, a safe wrapper implementing `vdi-core`'s client traits, and the
//! named sections and events vdi-shm uses on Windows. On other platforms it builds and reports
//! "unsupported". It is filled by its own issue.

#![warn(missing_docs, missing_debug_implementations)]
