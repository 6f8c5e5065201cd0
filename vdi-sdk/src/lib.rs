//! A drop-in `libsqlvdi.so`: the C++ ABI of Microsoft's Linux VDI client SDK, over vdi-shm's
//! client side.
//!
//! Clients written for SQL Server on Linux (`#include "vdi.h"`, link with `-lsqlvdi`) build
//! unchanged against this library and run against any server of this project, such as the
//! reference engine `vdi-engine`. The ABI is that of vdi-spec.md §11: two non-virtual classes,
//! `ClientVirtualDeviceSet` and `ClientVirtualDevice`, each holding one private pointer, with
//! the methods `Create`, `GetConfiguration`, `OpenDevice`, `Close`, `SignalAbort`,
//! `OpenInSecondary`, `GetBufferHandle`, `MapBufferHandle`, `RegisterDeviceClosed`,
//! `GetCommand` and `CompleteCommand`; `int` results with the exact `VD_E_*` values;
//! `VDConfig` (44 bytes) and `VDC_Command` (24 bytes) as [`vdi_core::VdConfig`] and
//! [`vdi_core::VdcCommand`]; timeouts in ms, any negative value meaning no limit.
//!
//! It is not Microsoft's library and holds none of its code or headers: `include/vdi_sdk.h`
//! is this project's own declaration of the same interface.
//!
//! # How it is built
//!
//! - `cpp/sqlvdi.cpp`, compiled by `cc` in `build.rs`, defines the classes; each method
//!   forwards to an `extern "C"` function of this crate ([`ffi`]).
//! - [`ffi`] holds the library's `unsafe` code on Linux: it turns the raw pointers it is given
//!   into references and values, catches every panic, and maps every result to its `HRESULT`.
//!   [`cabi`] is the other way round: a [`vdi_core::ClientBackend`] that calls the C ABI with
//!   raw pointers, as a C++ client does (for the conformance suite and the benchmark).
//! - The rest ([`sdk`]) is safe Rust over [`vdi_shm::ShmClient`]: the state behind each C++
//!   object, the `VDC_Command`s handed out, the checks of bad input. State rules are vdi-core's
//!   ([`vdi_core::ClientSetMachine`]), asked through vdi-shm; this crate adds none.
//! - A version script makes the library export the classes' members and nothing else.
//!
//! # What a client can rely on
//!
//! - No C++ exception and no Rust panic crosses the ABI; constructors and destructors never
//!   fail.
//! - A `VDC_Command` handed out by `GetCommand` stays readable and writable until the same
//!   device's next `GetCommand` (a client may read it after completing it).
//! - Bad input gets the specification's code, never a crash: a NULL pointer, a name that is too
//!   long, not UTF-8 or breaks the naming rules (`VD_E_INVALID`); a command pointer that is not
//!   an active command of the device, including one completed already (`VD_E_INVALID`, never
//!   dereferenced); a call in the wrong state, or on a set after `Close` (`VD_E_PROTOCOL`).
//! - `OpenDevice`'s devices belong to the set object and live until it is destroyed; a client
//!   never deletes them.
//!
//! # Windows: the COM server
//!
//! Built for Windows, the same crate is `sqlvdi.dll`, an in-process COM server registered
//! under `CLSID_MSSQL_ClientVirtualDeviceSet` that implements `IClientVirtualDeviceSet2` and
//! `IClientVirtualDevice` over the same [`sdk`] state and vdi-shm's Windows backend (`com`,
//! which holds the crate's other `unsafe` code). Clients written against Microsoft's COM headers
//! (`CoCreateInstance(CLSID_MSSQL_ClientVirtualDeviceSet, ...)`) run unchanged once
//! `regsvr32 sqlvdi.dll` has registered it, which it refuses on a machine where another DLL
//! (Microsoft's, with SQL Server) holds the class.
//!
//! Linux and Windows only; elsewhere the crate is empty.

#![warn(missing_docs, missing_debug_implementations)]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

#[cfg(target_os = "linux")]
pub mod cabi;
#[cfg(windows)]
pub mod com;
#[cfg(target_os = "linux")]
pub mod ffi;
#[cfg(any(target_os = "linux", windows))]
pub mod sdk;
