//! Every code equals the value of Microsoft's headers, and every configuration rule rejects the
//! values just outside its bounds and accepts the bounds themselves.

use vdi_core::{
    ClientConfig, CommandCode, CompletionCode, Config, ConfigError, Error, Features, HResult,
    NameError, ServerConfig, Timeout, VdConfig, VdcCommand, guids, validate_name,
};

#[test]
fn command_codes_match_vdi_h() {
    let expected: [(CommandCode, u32, &str); 19] = [
        (CommandCode::READ, 1, "VDC_Read"),
        (CommandCode::WRITE, 2, "VDC_Write"),
        (CommandCode::CLEAR_ERROR, 3, "VDC_ClearError"),
        (CommandCode::REWIND, 4, "VDC_Rewind"),
        (CommandCode::WRITE_MARK, 5, "VDC_WriteMark"),
        (CommandCode::SKIP_MARKS, 6, "VDC_SkipMarks"),
        (CommandCode::SKIP_BLOCKS, 7, "VDC_SkipBlocks"),
        (CommandCode::LOAD, 8, "VDC_Load"),
        (CommandCode::GET_POSITION, 9, "VDC_GetPosition"),
        (CommandCode::SET_POSITION, 10, "VDC_SetPosition"),
        (CommandCode::DISCARD, 11, "VDC_Discard"),
        (CommandCode::FLUSH, 12, "VDC_Flush"),
        (CommandCode::SNAPSHOT, 13, "VDC_Snapshot"),
        (CommandCode::MOUNT_SNAPSHOT, 14, "VDC_MountSnapshot"),
        (CommandCode::PREPARE_TO_FREEZE, 15, "VDC_PrepareToFreeze"),
        (CommandCode::FILE_INFO_BEGIN, 16, "VDC_FileInfoBegin"),
        (CommandCode::FILE_INFO_END, 17, "VDC_FileInfoEnd"),
        (CommandCode::GET_ERROR, 18, "VDC_GetError"),
        (CommandCode::COMPLETE, 19, "VDC_Complete"),
    ];
    assert_eq!(CommandCode::ALL.len(), expected.len());
    for (code, value, name) in expected {
        assert_eq!(code.0, value);
        assert_eq!(format!("{code:?}"), name);
        assert!(!code.to_string().is_empty());
    }
    // Unknown values are kept and printed as numbers.
    assert_eq!(format!("{:?}", CommandCode(20)), "CommandCode(0x14)");
    assert_eq!(CommandCode(20).to_string(), "unknown CommandCode 0x14");
}

#[test]
fn hresults_match_vdierror_h() {
    let expected: [(HResult, u32, &str); 13] = [
        (HResult::VD_E_NOTOPEN, 0x8077_0002, "VD_E_NOTOPEN"),
        (HResult::VD_E_TIMEOUT, 0x8077_0003, "VD_E_TIMEOUT"),
        (HResult::VD_E_ABORT, 0x8077_0004, "VD_E_ABORT"),
        (HResult::VD_E_SECURITY, 0x8077_0005, "VD_E_SECURITY"),
        (HResult::VD_E_INVALID, 0x8077_0006, "VD_E_INVALID"),
        (
            HResult::VD_E_INSTANCE_NAME,
            0x8077_0007,
            "VD_E_INSTANCE_NAME",
        ),
        (HResult::VD_E_NOTSUPPORTED, 0x8077_0009, "VD_E_NOTSUPPORTED"),
        (HResult::VD_E_MEMORY, 0x8077_000A, "VD_E_MEMORY"),
        (HResult::VD_E_UNEXPECTED, 0x8077_000B, "VD_E_UNEXPECTED"),
        (HResult::VD_E_PROTOCOL, 0x8077_000C, "VD_E_PROTOCOL"),
        (HResult::VD_E_OPEN, 0x8077_000D, "VD_E_OPEN"),
        (HResult::VD_E_CLOSE, 0x8077_000E, "VD_E_CLOSE"),
        (HResult::VD_E_BUSY, 0x8077_000F, "VD_E_BUSY"),
    ];
    for (hr, value, name) in expected {
        assert_eq!(hr.0 as u32, value);
        assert_eq!(format!("{hr:?}"), name);
        assert_eq!(hr.facility(), 0x77);
        assert!(!hr.is_ok());
    }
    // Codes 1 and 8 are not used.
    assert_eq!(HResult(0x8077_0001_u32 as i32).name(), None);
    assert_eq!(HResult(0x8077_0008_u32 as i32).name(), None);
    assert_eq!(
        format!("{:?}", HResult(0x8077_0001_u32 as i32)),
        "HResult(0x80770001)"
    );
}

#[test]
fn com_hresults_match_winerror_h() {
    let expected: [(HResult, u32, &str); 11] = [
        (HResult::E_ACCESSDENIED, 0x8007_0005, "E_ACCESSDENIED"),
        (HResult::E_NOINTERFACE, 0x8000_4002, "E_NOINTERFACE"),
        (HResult::E_POINTER, 0x8000_4003, "E_POINTER"),
        (HResult::E_OUTOFMEMORY, 0x8007_000E, "E_OUTOFMEMORY"),
        (HResult::E_INVALIDARG, 0x8007_0057, "E_INVALIDARG"),
        (
            HResult::REGDB_E_CLASSNOTREG,
            0x8004_0154,
            "REGDB_E_CLASSNOTREG",
        ),
        (
            HResult::CLASS_E_CLASSNOTAVAILABLE,
            0x8004_0111,
            "CLASS_E_CLASSNOTAVAILABLE",
        ),
        (
            HResult::CO_E_NOTINITIALIZED,
            0x8004_01F0,
            "CO_E_NOTINITIALIZED",
        ),
        (
            HResult::RPC_E_CHANGED_MODE,
            0x8001_0106,
            "RPC_E_CHANGED_MODE",
        ),
        (
            HResult::E_NOTSUPPORTED,
            0x8007_0032,
            "HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)",
        ),
        (
            CompletionCode::NOT_SUPPORTED.to_hresult(),
            0x8007_0032,
            "HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)",
        ),
    ];
    for (hr, value, name) in expected {
        assert_eq!(hr.0 as u32, value);
        assert_eq!(format!("{hr:?}"), name);
        assert!(!hr.is_ok());
    }
}

#[test]
fn errors_round_trip_through_hresults() {
    for hr in HResult::ALL.iter().copied().filter(|h| !h.is_ok()) {
        let e = Error::from_hresult(hr).unwrap();
        assert_eq!(e.hresult(), hr, "{e}");
        assert!(e.to_string().contains(hr.name().unwrap()), "{e}");
    }
    assert_eq!(Error::from_hresult(HResult::S_OK), None);
    let odd = HResult(0x8077_0042_u32 as i32);
    assert_eq!(Error::from_hresult(odd), Some(Error::Other(odd)));
}

#[test]
fn completion_codes_match_winerror_h() {
    let expected: [(CompletionCode, u32, &str); 14] = [
        (CompletionCode::SUCCESS, 0, "ERROR_SUCCESS"),
        (CompletionCode::INVALID_HANDLE, 6, "ERROR_INVALID_HANDLE"),
        (CompletionCode::ARENA_TRASHED, 7, "ERROR_ARENA_TRASHED"),
        (CompletionCode::HANDLE_EOF, 38, "ERROR_HANDLE_EOF"),
        (
            CompletionCode::HANDLE_DISK_FULL,
            39,
            "ERROR_HANDLE_DISK_FULL",
        ),
        (CompletionCode::NOT_SUPPORTED, 50, "ERROR_NOT_SUPPORTED"),
        (CompletionCode::DISK_FULL, 112, "ERROR_DISK_FULL"),
        (
            CompletionCode::OPERATION_ABORTED,
            995,
            "ERROR_OPERATION_ABORTED",
        ),
        (CompletionCode::END_OF_MEDIA, 1100, "ERROR_END_OF_MEDIA"),
        (
            CompletionCode::FILEMARK_DETECTED,
            1101,
            "ERROR_FILEMARK_DETECTED",
        ),
        (
            CompletionCode::NO_DATA_DETECTED,
            1104,
            "ERROR_NO_DATA_DETECTED",
        ),
        (CompletionCode::IO_DEVICE, 1117, "ERROR_IO_DEVICE"),
        (CompletionCode::EOM_OVERFLOW, 1129, "ERROR_EOM_OVERFLOW"),
        (
            CompletionCode::NO_SYSTEM_RESOURCES,
            1450,
            "ERROR_NO_SYSTEM_RESOURCES",
        ),
    ];
    assert_eq!(CompletionCode::ALL.len(), expected.len());
    for (code, value, name) in expected {
        assert_eq!(code.0, value);
        assert_eq!(format!("{code:?}"), name);
    }
    assert_eq!(
        format!("{:?}", CompletionCode(9999)),
        "CompletionCode(0x270f)"
    );
}

#[test]
fn feature_bits_match_vdi_h() {
    let expected: [(Features, u32, &str); 16] = [
        (Features::REMOVABLE, 0x1, "VDF_Removable"),
        (Features::REWIND, 0x2, "VDF_Rewind"),
        (Features::POSITION, 0x10, "VDF_Position"),
        (Features::SKIP_BLOCKS, 0x20, "VDF_SkipBlocks"),
        (Features::REVERSE_POSITION, 0x40, "VDF_ReversePosition"),
        (Features::DISCARD, 0x80, "VDF_Discard"),
        (Features::FILE_MARKS, 0x100, "VDF_FileMarks"),
        (Features::RANDOM_ACCESS, 0x200, "VDF_RandomAccess"),
        (Features::SNAPSHOT_PREPARE, 0x400, "VDF_SnapshotPrepare"),
        (Features::ENUM_FROZEN_FILES, 0x800, "VDF_EnumFrozenFiles"),
        (Features::VSS_WRITER, 0x1000, "VDF_VSSWriter"),
        (Features::REQUEST_COMPLETE, 0x2000, "VDF_RequestComplete"),
        (Features::WRITE_MEDIA, 0x1_0000, "VDF_WriteMedia"),
        (Features::READ_MEDIA, 0x2_0000, "VDF_ReadMedia"),
        (Features::COMPLETE_ENABLED, 0x4_0000, "VDF_CompleteEnabled"),
        (Features::LATCH_STATS, 0x8000_0000, "VDF_LatchStats"),
    ];
    for (f, value, name) in expected {
        assert_eq!(f.bits(), value);
        assert_eq!(format!("{f:?}"), name);
    }
    assert_eq!(Features::LIKE_PIPE.bits(), 0);
    assert_eq!(Features::LIKE_TAPE.bits(), 0x173);
    assert_eq!(
        Features::LIKE_TAPE,
        Features::FILE_MARKS
            | Features::REMOVABLE
            | Features::REWIND
            | Features::POSITION
            | Features::SKIP_BLOCKS
            | Features::REVERSE_POSITION
    );
    assert_eq!(Features::LIKE_DISK, Features::RANDOM_ACCESS);
    assert_eq!(format!("{:?}", Features(0x4)), "0x4");
}

#[test]
fn guids_match_vdiguid_h() {
    assert_eq!(
        guids::IID_ICLIENT_VIRTUAL_DEVICE,
        0x40700424_0080_11d2_851f_00c04fc21759
    );
    assert_eq!(
        guids::IID_ICLIENT_VIRTUAL_DEVICE_SET,
        0x40700425_0080_11d2_851f_00c04fc21759
    );
    assert_eq!(
        guids::IID_ICLIENT_VIRTUAL_DEVICE_SET2,
        0xd0e6eb07_7a62_11d2_8573_00c04fc21759
    );
    assert_eq!(
        guids::IID_ISERVER_VIRTUAL_DEVICE_SET2,
        0xaecbd0d6_24c6_11d3_85b7_00c04fc21759
    );
    assert_eq!(
        guids::CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET,
        guids::IID_ICLIENT_VIRTUAL_DEVICE_SET
    );
}

#[test]
fn raw_layouts() {
    assert_eq!(size_of::<VdConfig>(), 44);
    assert_eq!(align_of::<VdConfig>(), 4);
    let offsets = [
        std::mem::offset_of!(VdConfig, device_count),
        std::mem::offset_of!(VdConfig, features),
        std::mem::offset_of!(VdConfig, prefix_zone_size),
        std::mem::offset_of!(VdConfig, alignment),
        std::mem::offset_of!(VdConfig, soft_file_mark_block_size),
        std::mem::offset_of!(VdConfig, eom_warning_size),
        std::mem::offset_of!(VdConfig, server_time_out),
        std::mem::offset_of!(VdConfig, block_size),
        std::mem::offset_of!(VdConfig, max_io_depth),
        std::mem::offset_of!(VdConfig, max_transfer_size),
        std::mem::offset_of!(VdConfig, buffer_area_size),
    ];
    assert_eq!(offsets, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]);
    #[cfg(target_pointer_width = "64")]
    {
        assert_eq!(size_of::<VdcCommand>(), 24);
        assert_eq!(std::mem::offset_of!(VdcCommand, command_code), 0);
        assert_eq!(std::mem::offset_of!(VdcCommand, size), 4);
        assert_eq!(std::mem::offset_of!(VdcCommand, position), 8);
        assert_eq!(std::mem::offset_of!(VdcCommand, buffer), 16);
    }
}

fn client(f: impl FnOnce(&mut ClientConfig)) -> Result<(), ConfigError> {
    let mut c = ClientConfig::default();
    f(&mut c);
    c.validate()
}

fn server(f: impl FnOnce(&mut ServerConfig)) -> Result<(), ConfigError> {
    let mut s = ServerConfig::backup(512, 64 * 1024);
    f(&mut s);
    s.validate()
}

#[test]
fn device_count_bounds() {
    assert_eq!(
        client(|c| c.device_count = 0),
        Err(ConfigError::DeviceCount(0))
    );
    assert_eq!(client(|c| c.device_count = 1), Ok(()));
    assert_eq!(client(|c| c.device_count = 64), Ok(()));
    assert_eq!(
        client(|c| c.device_count = 65),
        Err(ConfigError::DeviceCount(65))
    );
}

#[test]
fn block_size_bounds() {
    for ok in [512, 1024, 4096, 65536] {
        assert_eq!(server(|s| s.block_size = ok), Ok(()), "{ok}");
    }
    for bad in [0, 256, 511, 513, 768, 65535, 65537, 131072] {
        assert_eq!(
            server(|s| s.block_size = bad),
            Err(ConfigError::BlockSize(bad)),
            "{bad}"
        );
    }
}

#[test]
fn alignment_bounds() {
    // Server: a power of two in block size..=64 KiB; 0 means the block size.
    assert_eq!(server(|s| s.alignment = 0), Ok(()));
    assert_eq!(server(|s| s.alignment = 512), Ok(()));
    assert_eq!(server(|s| s.alignment = 65536), Ok(()));
    assert_eq!(
        server(|s| {
            s.block_size = 4096;
            s.alignment = 2048;
        }),
        Err(ConfigError::AlignmentBelowBlockSize {
            alignment: 2048,
            block_size: 4096
        })
    );
    assert_eq!(
        server(|s| s.alignment = 131072),
        Err(ConfigError::AlignmentTooLarge(131072))
    );
    assert_eq!(
        server(|s| s.alignment = 3000),
        Err(ConfigError::AlignmentNotPowerOfTwo(3000))
    );
    // Client: 0 or a power of two up to 64 KiB.
    assert_eq!(client(|c| c.alignment = 0), Ok(()));
    assert_eq!(client(|c| c.alignment = 1), Ok(()));
    assert_eq!(client(|c| c.alignment = 65536), Ok(()));
    assert_eq!(
        client(|c| c.alignment = 65537),
        Err(ConfigError::AlignmentNotPowerOfTwo(65537))
    );
    assert_eq!(
        client(|c| c.alignment = 131072),
        Err(ConfigError::AlignmentTooLarge(131072))
    );
}

#[test]
fn max_transfer_size_bounds() {
    for ok in [65536, 131072, 1024 * 1024, 4 * 1024 * 1024] {
        assert_eq!(server(|s| s.max_transfer_size = ok), Ok(()), "{ok}");
    }
    for bad in [
        0,
        65535,
        65537,
        98304,
        4 * 1024 * 1024 + 65536,
        4 * 1024 * 1024 - 1,
    ] {
        assert_eq!(
            server(|s| s.max_transfer_size = bad),
            Err(ConfigError::MaxTransferSize(bad)),
            "{bad}"
        );
    }
}

#[test]
fn prefix_zone_bounds() {
    assert_eq!(client(|c| c.prefix_zone_size = 65536), Ok(()));
    assert_eq!(
        client(|c| c.prefix_zone_size = 65537),
        Err(ConfigError::PrefixZoneTooLarge(65537))
    );
}

#[test]
fn feature_combinations() {
    for ok in [
        Features::LIKE_PIPE,
        Features::REMOVABLE,
        Features::LIKE_TAPE,
        Features::LIKE_DISK,
        Features::LIKE_DISK | Features::REMOVABLE,
        Features::LIKE_PIPE
            | Features::DISCARD
            | Features::REQUEST_COMPLETE
            | Features::SNAPSHOT_PREPARE,
        Features::LIKE_TAPE | Features::DISCARD,
    ] {
        assert_eq!(client(|c| c.features = ok), Ok(()), "{ok:?}");
    }
    for mode in [
        Features::REWIND,
        Features::FILE_MARKS,
        Features::LIKE_TAPE | Features::RANDOM_ACCESS,
        Features(Features::LIKE_TAPE.bits() & !Features::REWIND.bits()),
        Features::POSITION | Features::RANDOM_ACCESS,
    ] {
        assert_eq!(
            client(|c| c.features = mode),
            Err(ConfigError::UnsupportedMode(mode)),
            "{mode:?}"
        );
    }
    assert_eq!(
        client(|c| c.features = Features(0x4)),
        Err(ConfigError::UnknownFeatures(Features(0x4)))
    );
    assert_eq!(
        client(|c| c.features = Features::WRITE_MEDIA),
        Err(ConfigError::ServerOnlyFeatures(Features::WRITE_MEDIA))
    );
    // Server features.
    assert_eq!(
        server(|s| s.features = Features::READ_MEDIA | Features::WRITE_MEDIA),
        Ok(())
    );
    assert_eq!(
        server(|s| s.features = Features::empty()),
        Err(ConfigError::ServerFeatures(Features::empty()))
    );
    assert_eq!(
        server(|s| s.features = Features::WRITE_MEDIA | Features::REMOVABLE),
        Err(ConfigError::ServerFeatures(
            Features::WRITE_MEDIA | Features::REMOVABLE
        ))
    );
    let s = ServerConfig {
        features: Features::WRITE_MEDIA | Features::COMPLETE_ENABLED,
        ..ServerConfig::backup(512, 65536)
    };
    assert_eq!(
        s.validate_for(&ClientConfig::default()),
        Err(ConfigError::CompleteNotRequested)
    );
    let c = ClientConfig {
        features: Features::REQUEST_COMPLETE,
        ..ClientConfig::default()
    };
    assert_eq!(s.validate_for(&c), Ok(()));
}

#[test]
fn combined_configuration() {
    let c = ClientConfig {
        device_count: 3,
        alignment: 128 * 1024 / 2,
        prefix_zone_size: 64,
        ..ClientConfig::default()
    };
    let s = ServerConfig::restore(4096, 1024 * 1024);
    let cfg = Config::combine(&c, &s).unwrap();
    assert_eq!(cfg.alignment, 65536);
    assert_eq!(cfg.block_size, 4096);
    assert_eq!(cfg.max_io_depth, 4);
    assert_eq!(cfg.buffer_area_size, 1024 * 1024 * 4 * 3);
    assert!(!cfg.is_backup());
    assert_eq!(Config::from_raw(&cfg.to_raw()), cfg);
    assert_eq!(cfg.client(), c);
    // Errors map to VD_E_NOTSUPPORTED.
    let e: Error = ConfigError::DeviceCount(0).into();
    assert_eq!(e.hresult(), HResult::VD_E_NOTSUPPORTED);
    assert_eq!(
        e.to_string(),
        "unsupported configuration: device count 0 is outside 1..=64 (VD_E_NOTSUPPORTED)"
    );
}

#[test]
fn name_rules() {
    assert_eq!(validate_name(""), Err(NameError::Empty));
    assert_eq!(validate_name(&"a".repeat(96)), Ok(()));
    assert_eq!(validate_name(&"a".repeat(97)), Err(NameError::TooLong(97)));
    assert_eq!(validate_name("a/b"), Err(NameError::PathSeparator));
    assert_eq!(validate_name("a\\b"), Err(NameError::PathSeparator));
    assert_eq!(validate_name("a\nb"), Err(NameError::ControlCharacter));
    assert_eq!(validate_name("a\u{7f}"), Err(NameError::ControlCharacter));
    assert_eq!(validate_name(".."), Err(NameError::DotName));
    assert_eq!(validate_name("..x"), Ok(()));
    assert_eq!(validate_name("Ünïcödé-名前"), Ok(()));
    let e: Error = NameError::PathSeparator.into();
    assert_eq!(e.hresult(), HResult::VD_E_INVALID);
}

#[test]
fn timeouts() {
    assert_eq!(Timeout::INFINITE.as_millis(), 0xFFFF_FFFF);
    assert_eq!(
        Timeout::from(std::time::Duration::from_micros(1)).as_millis(),
        1
    );
    assert_eq!(
        Timeout::from(std::time::Duration::from_secs(u64::MAX)),
        Timeout::INFINITE
    );
    assert_eq!(Timeout::from(None), Timeout::INFINITE);
}
