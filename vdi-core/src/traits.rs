//! The four roles every backend implements: client set, client device, server set, server
//! device; plus the command and completion types they share.
//!
//! Calls block for at most their [`Timeout`]; [`Timeout::POLL`] never blocks and
//! [`Timeout::INFINITE`] waits until the event, an abort or the peer's death. The traits fit both
//! the shared-memory backend (`vdi-shm`) and the COM binding to Microsoft's sqlvdi.dll
//! (`vdi-win`); `vdi-async` wraps any implementation of them.

use core::fmt;

use crate::{ClientConfig, CommandCode, CompletionCode, Config, Error, ServerConfig, Timeout};

/// How a command ended: the three values `CompleteCommand` takes.
///
/// ```
/// use vdi_core::{Completion, CompletionCode};
/// let c = Completion::eof(1000);
/// assert_eq!(c.code, CompletionCode::HANDLE_EOF);
/// assert_eq!(c.bytes_transferred, 1000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The Win32 completion code.
    pub code: CompletionCode,
    /// Bytes moved (Read and Write only).
    pub bytes_transferred: u32,
    /// The position (GetPosition and SetPosition only).
    pub position: u64,
}

impl Completion {
    /// Success with `bytes` moved.
    pub const fn success(bytes: u32) -> Self {
        Self {
            code: CompletionCode::SUCCESS,
            bytes_transferred: bytes,
            position: 0,
        }
    }

    /// The end of the data after `bytes` were read (`ERROR_HANDLE_EOF`).
    pub const fn eof(bytes: u32) -> Self {
        Self {
            code: CompletionCode::HANDLE_EOF,
            bytes_transferred: bytes,
            position: 0,
        }
    }

    /// `code` with no bytes moved.
    pub const fn with_code(code: CompletionCode) -> Self {
        Self {
            code,
            bytes_transferred: 0,
            position: 0,
        }
    }

    /// `ERROR_NOT_SUPPORTED`: the answer to a command the client does not implement.
    pub const fn not_supported() -> Self {
        Self::with_code(CompletionCode::NOT_SUPPORTED)
    }

    /// `ERROR_OPERATION_ABORTED`: what aborts and dropped commands produce.
    pub const fn aborted() -> Self {
        Self::with_code(CompletionCode::OPERATION_ABORTED)
    }

    /// Success, reporting `position` (GetPosition, SetPosition).
    pub const fn position(position: u64) -> Self {
        Self {
            code: CompletionCode::SUCCESS,
            bytes_transferred: 0,
            position,
        }
    }
}

/// A process-independent handle of a command's buffer (`GetBufferHandle`).
///
/// The value holds no address: it names a buffer within one device set, with a generation that
/// changes whenever the buffer is freed, so a stale or foreign handle is rejected.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufferHandle(pub u32);

impl fmt::Debug for BufferHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BufferHandle({:#010x})", self.0)
    }
}

/// A command a client took with `GetCommand`: owned, and completed exactly once.
///
/// Completing consumes the command ([`ClientDevice::complete`]). Implementations complete a
/// command that is dropped without being completed with `ERROR_OPERATION_ABORTED` and log a
/// warning, so the server is never left waiting for it.
pub trait ClientCommand: Send {
    /// The command code.
    fn code(&self) -> CommandCode;
    /// The `size` field: the byte count of Read and Write; overloaded by some commands.
    fn size(&self) -> u32;
    /// The `position` field (RandomAccess Read/Write, SetPosition).
    fn position(&self) -> u64;
    /// The index of the device the command belongs to (0 is the device named like the set).
    fn device_index(&self) -> u32;
    /// The data the server wrote (Write): the first `size` bytes of the buffer. Empty for
    /// commands without a buffer.
    fn data(&self) -> &[u8];
    /// The space to fill (Read): `size` bytes. Empty for commands without a buffer.
    fn data_mut(&mut self) -> &mut [u8];
    /// The client's prefix zone directly below the data (`prefixZoneSize` bytes). Empty for
    /// commands without a buffer.
    fn prefix_zone(&mut self) -> &mut [u8];
}

/// A buffer mapped in this process from a [`BufferHandle`] (`MapBufferHandle`).
pub trait MappedBuffer: Send {
    /// The handle it was mapped from.
    fn handle(&self) -> BufferHandle;
    /// The mapped bytes: the start of the buffer's data zone, as long as asked for.
    fn as_slice(&self) -> &[u8];
    /// The mapped bytes, to write.
    fn as_mut_slice(&mut self) -> &mut [u8];
}

/// Creates device sets on the client side (`CreateEx`, `OpenInSecondaryEx`).
pub trait ClientBackend: Send + Sync {
    /// The sets this backend creates.
    type Set: ClientDeviceSet;

    /// `CreateEx`: creates a set named `name` for the instance `instance` (`None` is the
    /// default instance).
    ///
    /// # Errors
    ///
    /// `VD_E_NOTSUPPORTED` for a configuration that breaks a rule, `VD_E_INVALID` for a bad
    /// name, `VD_E_PROTOCOL` when a set of that name exists, `VD_E_INSTANCE_NAME`.
    fn create(
        &self,
        instance: Option<&str>,
        name: &str,
        config: &ClientConfig,
    ) -> Result<Self::Set, Error>;

    /// `OpenInSecondaryEx`: joins the configured set `name` from another process.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` when no such set is ready for secondaries, `VD_E_ABORT`.
    fn open_secondary(&self, instance: Option<&str>, name: &str) -> Result<Self::Set, Error>;
}

/// A device set as the client uses it (`IClientVirtualDeviceSet2`).
pub trait ClientDeviceSet: Send + Sync {
    /// The devices of this set.
    type Device: ClientDevice;
    /// Buffers mapped from handles.
    type Mapped: MappedBuffer;

    /// `GetConfiguration`: waits until the server has configured the set.
    ///
    /// # Errors
    ///
    /// `VD_E_TIMEOUT` (call again), `VD_E_ABORT`, `VD_E_PROTOCOL`.
    fn configuration(&self, timeout: Timeout) -> Result<Config, Error>;

    /// `OpenDevice`: opens the device `name` (the first device has the set's name).
    ///
    /// # Errors
    ///
    /// `VD_E_OPEN` (all are open), `VD_E_PROTOCOL` (not configured, or already open),
    /// `VD_E_INVALID` (no such device), `VD_E_ABORT`.
    fn open_device(&self, name: &str) -> Result<Self::Device, Error>;

    /// `GetBufferHandle`: a handle to the buffer of `command`, for another process.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a command without a buffer or of another set.
    fn buffer_handle(
        &self,
        command: &<Self::Device as ClientDevice>::Command,
    ) -> Result<BufferHandle, Error>;

    /// `MapBufferHandle`: this process's view of the first `len` bytes of the buffer a handle
    /// names.
    ///
    /// `len` is the size of the Read or Write command that carries the buffer: the process that
    /// made the handle sends it along, since a handle says nothing of a length (sqlvdi's
    /// `MapBufferHandle` returns an address only). The view lives until it is dropped, which
    /// must happen before the command is completed. While it lives, no other view of those
    /// bytes can be made in this process (a second mapping of the handle fails).
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a handle of another set, or of a buffer that was freed since, for a
    /// `len` larger than the buffer (or than the set's `maxTransferSize`), and for a buffer
    /// this process already has a view of; `VD_E_PROTOCOL` when the set is not open.
    fn map_buffer_handle(&self, handle: BufferHandle, len: u32) -> Result<Self::Mapped, Error>;

    /// `SignalAbort`: every waiting call on either side returns `VD_E_ABORT`.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` if the set was closed.
    fn signal_abort(&self) -> Result<(), Error>;

    /// `Close`: releases the set. Devices still open make it answer `VD_E_OPEN` and abort.
    ///
    /// # Errors
    ///
    /// `VD_E_OPEN`, `VD_E_PROTOCOL` (already closed).
    fn close(&self) -> Result<(), Error>;
}

/// A device as the client uses it (`IClientVirtualDevice`).
pub trait ClientDevice: Send + Sync {
    /// The commands this device hands out.
    type Command: ClientCommand;

    /// The device's index in its set.
    fn index(&self) -> u32;

    /// `GetCommand`: the next command, in the order the server sent them.
    ///
    /// # Errors
    ///
    /// `VD_E_CLOSE` (the normal end), `VD_E_TIMEOUT` (call again), `VD_E_ABORT`.
    fn command(&self, timeout: Timeout) -> Result<Self::Command, Error>;

    /// `CompleteCommand`: ends `command` and hands its buffer back to the server.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a command of another device, or a byte count above its size;
    /// `VD_E_ABORT` (the completion is ignored).
    fn complete(&self, command: Self::Command, completion: Completion) -> Result<(), Error>;
}

/// Opens device sets on the server side (`IServerVirtualDeviceSet2::Open`).
pub trait ServerBackend: Send + Sync {
    /// The sets this backend opens.
    type Set: ServerDeviceSet;

    /// `Open`: connects to the set `name` that a client created.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` when no such set exists (the call does not wait for one).
    fn open(&self, instance: Option<&str>, name: &str) -> Result<Self::Set, Error>;
}

/// A buffer the server allocated in shared memory.
pub trait ServerBuffer: Send {
    /// The data zone (the client's prefix zone is not part of it).
    fn as_slice(&self) -> &[u8];
    /// The data zone, to write.
    fn as_mut_slice(&mut self) -> &mut [u8];
}

/// A command as the server sends it.
#[derive(Debug)]
pub struct ServerCommand<B> {
    /// The command code.
    pub code: CommandCode,
    /// The `size` field (for Read and Write, the bytes to move; at most the buffer's length).
    pub size: u32,
    /// The `position` field.
    pub position: u64,
    /// The buffer, for Read and Write. It comes back with the completion.
    pub buffer: Option<B>,
}

impl<B> ServerCommand<B> {
    /// A command without a buffer.
    pub const fn control(code: CommandCode) -> Self {
        Self {
            code,
            size: 0,
            position: 0,
            buffer: None,
        }
    }

    /// A `VDC_Write` of the first `size` bytes of `buffer`.
    pub const fn write(buffer: B, size: u32) -> Self {
        Self {
            code: CommandCode::WRITE,
            size,
            position: 0,
            buffer: Some(buffer),
        }
    }

    /// A `VDC_Read` into the first `size` bytes of `buffer`.
    pub const fn read(buffer: B, size: u32) -> Self {
        Self {
            code: CommandCode::READ,
            size,
            position: 0,
            buffer: Some(buffer),
        }
    }
}

/// A send that failed; the command (and its buffer) come back to the caller.
#[derive(Debug)]
pub struct SendError<B> {
    /// Why it failed.
    pub error: Error,
    /// The command, untouched.
    pub command: ServerCommand<B>,
}

impl<B> fmt::Display for SendError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} could not be sent: {}",
            self.command.code.name().unwrap_or("command"),
            self.error
        )
    }
}

impl<B: fmt::Debug> std::error::Error for SendError<B> {}

/// A completion as the server receives it: what the client answered, with the buffer back.
#[derive(Debug)]
pub struct ServerCompletion<B> {
    /// The tag [`ServerDevice::send`] returned for the command.
    pub tag: u64,
    /// The command's code.
    pub code: CommandCode,
    /// How it ended.
    pub completion: Completion,
    /// The buffer the command carried.
    pub buffer: Option<B>,
}

/// A device set as the server uses it (`IServerVirtualDeviceSet2`).
pub trait ServerDeviceSet: Send + Sync {
    /// The devices of this set.
    type Device: ServerDevice<Buffer = Self::Buffer>;
    /// The set's shared buffers.
    type Buffer: ServerBuffer;

    /// `GetConfiguration`: the client's half of the configuration.
    ///
    /// # Errors
    ///
    /// `VD_E_ABORT`, `VD_E_PROTOCOL`.
    fn configuration(&self) -> Result<ClientConfig, Error>;

    /// `BeginConfiguration`.
    ///
    /// # Errors
    ///
    /// `VD_E_NOTSUPPORTED` for values that break a rule, `VD_E_PROTOCOL`, `VD_E_ABORT`.
    fn begin_configuration(&self, config: &ServerConfig) -> Result<(), Error>;

    /// `RequestBuffers`: before `EndConfiguration` the requests are summed; after it, each
    /// allocates at once.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a bad size or alignment, `VD_E_MEMORY`, `VD_E_PROTOCOL`.
    fn request_buffers(&self, size: u32, alignment: u32, count: u32) -> Result<(), Error>;

    /// `QueryAvailableBuffers`: how many buffers of `size` and `alignment` could be allocated.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID`, `VD_E_PROTOCOL`.
    fn query_available_buffers(&self, size: u32, alignment: u32) -> Result<u32, Error>;

    /// `EndConfiguration`: allocates the requested buffers; the client's `GetConfiguration`
    /// returns.
    ///
    /// # Errors
    ///
    /// `VD_E_MEMORY` (the set stays configurable with no buffers), `VD_E_PROTOCOL`.
    fn end_configuration(&self) -> Result<(), Error>;

    /// `OpenDevice`.
    ///
    /// # Errors
    ///
    /// `VD_E_OPEN` (all open), `VD_E_INVALID` (no such name), `VD_E_PROTOCOL`, `VD_E_ABORT`.
    fn open_device(&self, name: &str) -> Result<Self::Device, Error>;

    /// `AllocateBuffer`: a shared buffer of `size` bytes whose data zone is aligned to the
    /// larger of `alignment` and the set's alignment.
    ///
    /// # Errors
    ///
    /// `VD_E_MEMORY` when out of space, `VD_E_INVALID` for a bad size or alignment.
    fn allocate_buffer(&self, size: u32, alignment: u32) -> Result<Self::Buffer, Error>;

    /// `FreeBuffer`: returns a buffer to the set; handles of it become stale.
    ///
    /// # Errors
    ///
    /// `VD_E_INVALID` for a buffer of another set.
    fn free_buffer(&self, buffer: Self::Buffer) -> Result<(), Error>;

    /// `IsSharedBuffer`: whether `addr` lies in this set's shared buffer area.
    fn is_shared_buffer(&self, addr: *const u8) -> bool;

    /// `SignalAbort`.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL` if the set was closed.
    fn signal_abort(&self) -> Result<(), Error>;

    /// `Close`: devices still open make it answer `VD_E_PROTOCOL` and abort.
    ///
    /// # Errors
    ///
    /// `VD_E_PROTOCOL`.
    fn close(&self) -> Result<(), Error>;
}

/// A device as the server uses it (`IServerVirtualDevice`).
pub trait ServerDevice: Send + Sync {
    /// The set's buffers.
    type Buffer: ServerBuffer;

    /// The device's index in its set.
    fn index(&self) -> u32;

    /// `SendCommand`: queues a command; its completion comes from
    /// [`ServerDevice::completion`], tagged with the returned value.
    ///
    /// # Errors
    ///
    /// `VD_E_BUSY` when the queue is full, [`Error::DeviceError`] in IO-ERROR, `VD_E_PROTOCOL`
    /// after `CloseDevice`, `VD_E_ABORT`, `VD_E_INVALID` for a size that does not fit the
    /// buffer. The command comes back in the error.
    fn send(&self, command: ServerCommand<Self::Buffer>) -> Result<u64, SendError<Self::Buffer>>;

    /// Waits for the next completion (what sqlvdi's completion agent delivers by callback).
    ///
    /// After an abort, every outstanding command completes with `ERROR_OPERATION_ABORTED`, and
    /// then this returns `VD_E_ABORT`.
    ///
    /// # Errors
    ///
    /// `VD_E_TIMEOUT`, `VD_E_ABORT`, and `VD_E_CLOSE` after `CloseDevice` once nothing is
    /// outstanding.
    fn completion(&self, timeout: Timeout) -> Result<ServerCompletion<Self::Buffer>, Error>;

    /// `CloseDevice`: the client's `GetCommand` drains what is queued, then returns
    /// `VD_E_CLOSE`.
    ///
    /// # Errors
    ///
    /// `VD_E_ABORT` after an abort, `VD_E_PROTOCOL` when closed already.
    fn close(&self) -> Result<(), Error>;
}
