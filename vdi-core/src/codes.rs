//! Every numeric code of the protocol, as newtypes with named constants.
//!
//! The values are those of Microsoft's `vdi.h` and `vdierror.h` (vdi-spec.md §3.2, §7.1, §8) and
//! of `winerror.h` for the completion codes. A value this crate has no name for is still a valid
//! value: it is kept, compared and printed as a number, never rejected, because a peer (SQL Server,
//! or a newer sqlvdi.dll) may send codes that did not exist when this crate was written.

use core::fmt;

/// Generates a `u32`/`i32` newtype's named constants, a `name()` lookup, a Debug that prints the
/// name (or `Type(0x..)` for an unknown value) and a Display that prints the description.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        $vis:vis struct $ty:ident($inner:ty);
        $(
            $(#[$cmeta:meta])*
            $name:ident = $value:expr, $text:literal, $desc:literal;
        )*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(transparent)]
        $vis struct $ty(pub $inner);

        impl $ty {
            $(
                $(#[$cmeta])*
                #[doc = ""]
                #[doc = concat!("`", $text, "`: ", $desc, ".")]
                pub const $name: Self = Self($value);
            )*

            /// Every named value, in the order of the specification.
            pub const ALL: &'static [Self] = &[$(Self::$name),*];

            /// The name the Microsoft headers give this value, if it has one.
            pub const fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some($text),)*
                    _ => None,
                }
            }

            /// What the value means, in a few words; `None` for a value without a name.
            pub const fn description(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some($desc),)*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, concat!(stringify!($ty), "({:#x})"), self.0),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.description() {
                    Some(desc) => f.write_str(desc),
                    None => write!(f, concat!("unknown ", stringify!($ty), " {:#x}"), self.0),
                }
            }
        }

        impl From<$inner> for $ty {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }

        impl From<$ty> for $inner {
            fn from(value: $ty) -> Self {
                value.0
            }
        }
    };
}

codes! {
    /// A command code (`VDC_*`, `vdi.h` enum `VDCommandCode`; vdi-spec.md §7.1).
    ///
    /// ```
    /// use vdi_core::CommandCode;
    /// assert_eq!(CommandCode::WRITE.0, 2);
    /// assert_eq!(format!("{:?}", CommandCode::FLUSH), "VDC_Flush");
    /// assert_eq!(format!("{:?}", CommandCode(77)), "CommandCode(0x4d)");
    /// ```
    pub struct CommandCode(u32);
    READ = 1, "VDC_Read", "read data from the stream into the buffer";
    WRITE = 2, "VDC_Write", "write the buffer to the stream";
    CLEAR_ERROR = 3, "VDC_ClearError", "acknowledge an error and resume";
    REWIND = 4, "VDC_Rewind", "go back to the start of the data";
    WRITE_MARK = 5, "VDC_WriteMark", "write a filemark";
    SKIP_MARKS = 6, "VDC_SkipMarks", "skip a signed number of filemarks";
    SKIP_BLOCKS = 7, "VDC_SkipBlocks", "skip a signed number of blocks";
    LOAD = 8, "VDC_Load", "load the next medium";
    GET_POSITION = 9, "VDC_GetPosition", "report the current position";
    SET_POSITION = 10, "VDC_SetPosition", "move to a position";
    DISCARD = 11, "VDC_Discard", "discard an aborted backup set";
    FLUSH = 12, "VDC_Flush", "make everything written so far durable";
    SNAPSHOT = 13, "VDC_Snapshot", "take the snapshot now";
    MOUNT_SNAPSHOT = 14, "VDC_MountSnapshot", "mount the snapshot in place";
    PREPARE_TO_FREEZE = 15, "VDC_PrepareToFreeze", "the database is about to freeze";
    FILE_INFO_BEGIN = 16, "VDC_FileInfoBegin", "undocumented: file information begins";
    FILE_INFO_END = 17, "VDC_FileInfoEnd", "undocumented: file information ends";
    GET_ERROR = 18, "VDC_GetError", "undocumented: report the last error";
    COMPLETE = 19, "VDC_Complete", "the server has sent all data: harden the backup";
}

impl CommandCode {
    /// Whether the command carries a data buffer (Read and Write).
    pub const fn has_buffer(self) -> bool {
        matches!(self, Self::READ | Self::WRITE)
    }
}

codes! {
    /// A Win32 completion code, as passed to `CompleteCommand` (vdi-spec.md §7.3).
    ///
    /// ```
    /// use vdi_core::CompletionCode;
    /// assert_eq!(CompletionCode::HANDLE_EOF.0, 38);
    /// assert!(!CompletionCode::HANDLE_EOF.is_error());
    /// assert!(CompletionCode::DISK_FULL.is_error());
    /// ```
    pub struct CompletionCode(u32);
    SUCCESS = 0, "ERROR_SUCCESS", "the command succeeded";
    INVALID_HANDLE = 6, "ERROR_INVALID_HANDLE", "the handle is invalid";
    ARENA_TRASHED = 7, "ERROR_ARENA_TRASHED", "the storage control blocks were destroyed";
    HANDLE_EOF = 38, "ERROR_HANDLE_EOF", "reached the end of the file";
    HANDLE_DISK_FULL = 39, "ERROR_HANDLE_DISK_FULL", "the disk is full";
    NOT_SUPPORTED = 50, "ERROR_NOT_SUPPORTED", "the request is not supported";
    DISK_FULL = 112, "ERROR_DISK_FULL", "there is not enough space on the disk";
    OPERATION_ABORTED = 995, "ERROR_OPERATION_ABORTED", "the I/O operation was aborted";
    END_OF_MEDIA = 1100, "ERROR_END_OF_MEDIA", "the physical end of the tape was reached";
    FILEMARK_DETECTED = 1101, "ERROR_FILEMARK_DETECTED", "a tape access reached a filemark";
    NO_DATA_DETECTED = 1104, "ERROR_NO_DATA_DETECTED", "no more data is on the tape";
    IO_DEVICE = 1117, "ERROR_IO_DEVICE", "the request could not be performed because of an I/O device error";
    EOM_OVERFLOW = 1129, "ERROR_EOM_OVERFLOW", "physical end of tape encountered";
    NO_SYSTEM_RESOURCES = 1450, "ERROR_NO_SYSTEM_RESOURCES", "insufficient system resources exist to complete the requested service";
}

impl CompletionCode {
    /// Whether this completion puts a device into the IO-ERROR state (vdi-spec.md §6).
    ///
    /// Success is not an error, and neither are the end-of-data and media conditions that a read
    /// or a removable device reports as normal flow: `ERROR_HANDLE_EOF`, `ERROR_NO_DATA_DETECTED`,
    /// `ERROR_FILEMARK_DETECTED` and the `ERROR_END_OF_MEDIA` warning. Every other code is.
    pub const fn is_error(self) -> bool {
        !matches!(
            self,
            Self::SUCCESS
                | Self::HANDLE_EOF
                | Self::NO_DATA_DETECTED
                | Self::FILEMARK_DETECTED
                | Self::END_OF_MEDIA
        )
    }

    /// The code as an `HRESULT_FROM_WIN32` value (`0x8007xxxx`), or `S_OK` for success.
    pub const fn to_hresult(self) -> HResult {
        if self.0 == 0 {
            HResult::S_OK
        } else if self.0 & 0xFFFF_0000 == 0 {
            HResult((0x8007_0000 | self.0) as i32)
        } else {
            HResult(self.0 as i32)
        }
    }
}

codes! {
    /// An `HRESULT`: the VDI status codes of `vdierror.h` (`VD_E_*`, facility 0x77; vdi-spec.md
    /// §8) and the few COM codes a client meets.
    ///
    /// ```
    /// use vdi_core::HResult;
    /// assert_eq!(HResult::VD_E_CLOSE.0 as u32, 0x8077_000E);
    /// assert_eq!(format!("{:?}", HResult::VD_E_ABORT), "VD_E_ABORT");
    /// assert_eq!(format!("{}", HResult(0x8077_0042_u32 as i32)), "unknown HResult 0x80770042");
    /// ```
    pub struct HResult(i32);
    S_OK = 0, "S_OK", "the call succeeded";
    S_FALSE = 1, "S_FALSE", "the call succeeded with a false result";
    VD_E_NOTOPEN = 0x8077_0002_u32 as i32, "VD_E_NOTOPEN", "the device or set is not open";
    VD_E_TIMEOUT = 0x8077_0003_u32 as i32, "VD_E_TIMEOUT", "the wait timed out";
    VD_E_ABORT = 0x8077_0004_u32 as i32, "VD_E_ABORT", "the operation was aborted";
    VD_E_SECURITY = 0x8077_0005_u32 as i32, "VD_E_SECURITY", "the security environment could not be set up";
    VD_E_INVALID = 0x8077_0006_u32 as i32, "VD_E_INVALID", "an invalid parameter was supplied";
    VD_E_INSTANCE_NAME = 0x8077_0007_u32 as i32, "VD_E_INSTANCE_NAME", "the instance name was not recognized";
    VD_E_NOTSUPPORTED = 0x8077_0009_u32 as i32, "VD_E_NOTSUPPORTED", "the requested configuration is invalid or unsupported";
    VD_E_MEMORY = 0x8077_000A_u32 as i32, "VD_E_MEMORY", "out of memory";
    VD_E_UNEXPECTED = 0x8077_000B_u32 as i32, "VD_E_UNEXPECTED", "unexpected internal error";
    VD_E_PROTOCOL = 0x8077_000C_u32 as i32, "VD_E_PROTOCOL", "the call is not allowed in the current state";
    VD_E_OPEN = 0x8077_000D_u32 as i32, "VD_E_OPEN", "all devices are open, or devices are still open";
    VD_E_CLOSE = 0x8077_000E_u32 as i32, "VD_E_CLOSE", "the device was closed by the server";
    VD_E_BUSY = 0x8077_000F_u32 as i32, "VD_E_BUSY", "the resource is busy";
    E_ACCESSDENIED = 0x8007_0005_u32 as i32, "E_ACCESSDENIED", "access is denied";
    E_NOINTERFACE = 0x8000_4002_u32 as i32, "E_NOINTERFACE", "no such interface is supported";
    E_OUTOFMEMORY = 0x8007_000E_u32 as i32, "E_OUTOFMEMORY", "out of memory";
    E_INVALIDARG = 0x8007_0057_u32 as i32, "E_INVALIDARG", "one or more arguments are invalid";
    REGDB_E_CLASSNOTREG = 0x8004_0154_u32 as i32, "REGDB_E_CLASSNOTREG", "class not registered";
    CLASS_E_CLASSNOTAVAILABLE = 0x8004_0111_u32 as i32, "CLASS_E_CLASSNOTAVAILABLE", "the class is not available";
    CLASS_E_NOAGGREGATION = 0x8004_0110_u32 as i32, "CLASS_E_NOAGGREGATION", "the class does not support aggregation";
    SELFREG_E_CLASS = 0x8004_0201_u32 as i32, "SELFREG_E_CLASS", "the class could not be registered or unregistered";
    CO_E_NOTINITIALIZED = 0x8004_01F0_u32 as i32, "CO_E_NOTINITIALIZED", "CoInitialize has not been called";
    E_POINTER = 0x8000_4003_u32 as i32, "E_POINTER", "an invalid pointer was passed";
    RPC_E_CHANGED_MODE = 0x8001_0106_u32 as i32, "RPC_E_CHANGED_MODE", "the thread is already in another COM apartment";
    E_NOTSUPPORTED = 0x8007_0032_u32 as i32, "HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)", "the request is not supported (on this platform)";
}

impl HResult {
    /// Whether the value reports success (the severity bit is clear).
    pub const fn is_ok(self) -> bool {
        self.0 >= 0
    }

    /// The facility field (0x77 for VDI's own codes).
    pub const fn facility(self) -> u16 {
        ((self.0 as u32 >> 16) & 0x1FFF) as u16
    }
}

/// A set of `VDF_*` feature bits (`vdi.h` enum `VDFeatures`; vdi-spec.md §3.2).
///
/// Unknown bits are kept. Debug prints the names of the known bits joined by `|` and any unknown
/// rest in hex.
///
/// ```
/// use vdi_core::Features;
/// let f = Features::REQUEST_COMPLETE | Features::WRITE_MEDIA;
/// assert_eq!(f.bits(), 0x12000);
/// assert!(f.contains(Features::WRITE_MEDIA));
/// assert_eq!(format!("{f:?}"), "VDF_RequestComplete | VDF_WriteMedia");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Features(pub u32);

macro_rules! features {
    ($($name:ident = $value:expr, $text:literal, $desc:literal;)*) => {
        impl Features {
            $(
                #[doc = concat!("`", $text, "` (`", stringify!($value), "`): ", $desc, ".")]
                pub const $name: Self = Self($value);
            )*

            /// Every single named bit, with its header name, in the order of the specification.
            pub const NAMED_BITS: &'static [(Self, &'static str)] = &[$((Self::$name, $text)),*];
        }
    };
}

features! {
    REMOVABLE = 0x1, "VDF_Removable", "the client supports media changes (VDC_Load)";
    REWIND = 0x2, "VDF_Rewind", "VDC_Rewind is supported";
    POSITION = 0x10, "VDF_Position", "VDC_GetPosition and VDC_SetPosition are supported";
    SKIP_BLOCKS = 0x20, "VDF_SkipBlocks", "VDC_SkipBlocks is supported";
    REVERSE_POSITION = 0x40, "VDF_ReversePosition", "negative skip counts are supported";
    DISCARD = 0x80, "VDF_Discard", "VDC_Discard is supported";
    FILE_MARKS = 0x100, "VDF_FileMarks", "filemarks are supported";
    RANDOM_ACCESS = 0x200, "VDF_RandomAccess", "reads and writes carry a byte position";
    SNAPSHOT_PREPARE = 0x400, "VDF_SnapshotPrepare", "VDC_PrepareToFreeze is sent before a snapshot freeze";
    ENUM_FROZEN_FILES = 0x800, "VDF_EnumFrozenFiles", "undocumented";
    VSS_WRITER = 0x1000, "VDF_VSSWriter", "undocumented";
    REQUEST_COMPLETE = 0x2000, "VDF_RequestComplete", "the client asks for VDC_Complete";
    WRITE_MEDIA = 0x1_0000, "VDF_WriteMedia", "set by the server: this is a backup";
    READ_MEDIA = 0x2_0000, "VDF_ReadMedia", "set by the server: expect reads";
    COMPLETE_ENABLED = 0x4_0000, "VDF_CompleteEnabled", "set by the server: VDC_Complete will be sent";
    LATCH_STATS = 0x8000_0000, "VDF_LatchStats", "undocumented";
}

impl Features {
    /// `VDF_LikePipe` (0): purely sequential.
    pub const LIKE_PIPE: Self = Self(0);
    /// `VDF_LikeTape` (0x173): filemarks, removable, rewind, position, skip blocks, reverse.
    pub const LIKE_TAPE: Self = Self(0x173);
    /// `VDF_LikeDisk` (0x200): random access.
    pub const LIKE_DISK: Self = Self(0x200);

    /// The bits that choose the device mode (pipe, tape or disk, with or without removable).
    pub const MODE_BITS: Self = Self(0x373);
    /// The optional bits a client may add to any mode.
    pub const CLIENT_OPTIONAL_BITS: Self =
        Self(0x80 | 0x400 | 0x800 | 0x1000 | 0x2000 | 0x8000_0000);
    /// The bits only the server sets.
    pub const SERVER_BITS: Self = Self(0x1_0000 | 0x2_0000 | 0x4_0000);

    /// The raw bit mask.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// No bits at all.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set in `self`.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// The bits of `self` that are also in `other`.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The bits of `self` that are not in `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Bits no header names.
    pub const fn unknown_bits(self) -> Self {
        let mut known = 0;
        let mut i = 0;
        while i < Self::NAMED_BITS.len() {
            known |= Self::NAMED_BITS[i].0.0;
            i += 1;
        }
        Self(self.0 & !known)
    }
}

impl core::ops::BitOr for Features {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl core::ops::BitOrAssign for Features {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl core::ops::BitAnd for Features {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("VDF_LikePipe");
        }
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { " | " };
            first = false;
            f.write_str(s)
        };
        for &(bit, name) in Self::NAMED_BITS {
            if self.contains(bit) {
                sep(f)?;
                f.write_str(name)?;
            }
        }
        let rest = self.unknown_bits();
        if rest.0 != 0 {
            sep(f)?;
            write!(f, "{:#x}", rest.0)?;
        }
        Ok(())
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<u32> for Features {
    fn from(value: u32) -> Self {
        Self(value)
    }
}
