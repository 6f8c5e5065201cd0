//! The Virtual Device Interface protocol of SQL Server, with no I/O.
//!
//! `vdi-core` holds what every implementation of VDI shares: the codes with their exact values
//! ([`CommandCode`], [`CompletionCode`], [`HResult`], [`Features`]), the configuration and its
//! rules ([`ClientConfig`], [`ServerConfig`], [`Config`], with the `#[repr(C)]` twins
//! [`VdConfig`] and [`VdcCommand`]), the state machines of the set and its devices
//! ([`ClientSetMachine`], [`ServerSetMachine`], [`ServerDeviceMachine`],
//! [`ClientDeviceMachine`]), and the traits of the four roles ([`ClientDeviceSet`],
//! [`ClientDevice`], [`ServerDeviceSet`], [`ServerDevice`]), and the rule that keeps two
//! writable views of the same bytes apart ([`LeaseTable`]).
//!
//! It is not a backend: it opens no shared memory, starts no thread, never blocks and never reads
//! the clock. `vdi-shm` implements the traits over shared memory, `vdi-win` over Microsoft's
//! sqlvdi.dll, and `vdi-async` wraps either for tokio.
//!
//! All values follow Microsoft's headers `vdi.h`, `vdiguid.h` and `vdierror.h` and the SQL Server
//! 2005 Virtual Backup Device Specification.
//!
//! # Examples
//!
//! ```
//! use vdi_core::{ClientConfig, Config, Features, ServerConfig};
//!
//! let client = ClientConfig { device_count: 4, features: Features::REQUEST_COMPLETE, ..ClientConfig::default() };
//! let server = ServerConfig {
//!     features: Features::WRITE_MEDIA | Features::COMPLETE_ENABLED,
//!     ..ServerConfig::backup(65536, 4 * 1024 * 1024)
//! };
//! let cfg = Config::combine(&client, &server)?;
//! assert!(cfg.is_backup() && cfg.complete_enabled());
//! assert_eq!(cfg.to_raw().buffer_area_size, 4 * 1024 * 1024 * 4 * 4);
//! # Ok::<(), vdi_core::ConfigError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

mod codes;
mod config;
mod error;
mod lease;
mod name;
mod state;
mod timeout;
mod traits;
mod turn;

pub use codes::{CommandCode, CompletionCode, Features, HResult};
pub use config::{
    ClientConfig, Config, ConfigError, MAX_ALIGNMENT, MAX_BLOCK_SIZE, MAX_DEVICES, MAX_IO_DEPTH,
    MAX_PREFIX_ZONE, MAX_TRANSFER_SIZE, MIN_BLOCK_SIZE, ServerConfig, TRANSFER_UNIT, VdConfig,
    VdcCommand, validate_alignment_bounds, validate_block_size, validate_client_features,
    validate_device_count, validate_max_transfer_size,
};
pub use error::{AbortReason, Error, InvalidReason, ProtocolReason, SystemError};
pub use lease::{Claim, Lease, LeaseTable, SharedLeases};
pub use name::{MAX_NAME_LEN, NameError, stripe_device_name, validate_name};
pub use state::{
    Call, ClientDeviceMachine, ClientSetMachine, ClientSetState, CloseAction, Delivery,
    DeviceState, ServerCall, ServerDeviceMachine, ServerSetMachine, ServerSetState,
};
pub use timeout::Timeout;
pub use traits::{
    BufferHandle, ClientBackend, ClientCommand, ClientDevice, ClientDeviceSet, Completion,
    MappedBuffer, SendError, ServerBackend, ServerBuffer, ServerCommand, ServerCompletion,
    ServerDevice, ServerDeviceSet,
};
pub use turn::{Turn, TurnGuard};

/// The interface and class IDs of the VDI COM objects (`vdiguid.h`; vdi-spec.md §2.1), as
/// `u128` values in the usual GUID text order.
pub mod guids {
    /// `IID_IClientVirtualDevice`: `40700424-0080-11d2-851f-00c04fc21759`.
    pub const IID_ICLIENT_VIRTUAL_DEVICE: u128 = 0x40700424_0080_11d2_851f_00c04fc21759;
    /// `IID_IClientVirtualDeviceSet`: `40700425-0080-11d2-851f-00c04fc21759`.
    pub const IID_ICLIENT_VIRTUAL_DEVICE_SET: u128 = 0x40700425_0080_11d2_851f_00c04fc21759;
    /// `IID_IClientVirtualDeviceSet2`: `d0e6eb07-7a62-11d2-8573-00c04fc21759`.
    pub const IID_ICLIENT_VIRTUAL_DEVICE_SET2: u128 = 0xd0e6eb07_7a62_11d2_8573_00c04fc21759;
    /// `IID_IServerVirtualDevice`: `b5e7a131-a7bd-11d1-84c2-00c04fc21759`.
    pub const IID_ISERVER_VIRTUAL_DEVICE: u128 = 0xb5e7a131_a7bd_11d1_84c2_00c04fc21759;
    /// `IID_IServerVirtualDeviceSet`: `b5e7a132-a7bd-11d1-84c2-00c04fc21759`.
    pub const IID_ISERVER_VIRTUAL_DEVICE_SET: u128 = 0xb5e7a132_a7bd_11d1_84c2_00c04fc21759;
    /// `IID_IServerVirtualDeviceSet2`: `AECBD0D6-24C6-11d3-85B7-00C04FC21759`.
    pub const IID_ISERVER_VIRTUAL_DEVICE_SET2: u128 = 0xaecbd0d6_24c6_11d3_85b7_00c04fc21759;
    /// `CLSID_MSSQL_ClientVirtualDeviceSet`: the same GUID as `IID_IClientVirtualDeviceSet`.
    pub const CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET: u128 = IID_ICLIENT_VIRTUAL_DEVICE_SET;
    /// `CLSID_MSSQL_ServerVirtualDeviceSet`: the same GUID as `IID_IServerVirtualDeviceSet`.
    pub const CLSID_MSSQL_SERVER_VIRTUAL_DEVICE_SET: u128 = IID_ISERVER_VIRTUAL_DEVICE_SET;
}
