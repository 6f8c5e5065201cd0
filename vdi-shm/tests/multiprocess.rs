//! Backup and restore between two real processes, for 1, 4 and 64 devices, checking that every
//! byte arrives in order. The server (the engine) runs in a child process: this test binary
//! re-run as `child_server`.

#![cfg(any(target_os = "linux", windows))]

mod common;

use std::time::Duration;

use common::{ChildProc, Plan, WAIT};
use vdi_core::{ClientBackend, ClientConfig, ClientDeviceSet, Features};
use vdi_shm::{ClientSet, ShmClient};

/// The child: runs the server side of the plan in `VDI_ROLE` (backup or restore).
#[test]
fn child_server() {
    let Some(role) = common::role() else { return };
    common::init_tracing();
    let (name, plan) = Plan::from_env();
    match role.as_str() {
        "backup" => common::serve_backup(&name, plan).expect("server backup"),
        "restore" => {
            let totals = common::serve_restore(&name, plan).expect("server restore");
            assert!(
                totals.iter().all(|&t| t == plan.bytes),
                "restored {totals:?}, expected {}",
                plan.bytes
            );
        }
        other => panic!("unknown role {other}"),
    }
}

/// Creates a set for `plan`, starts the engine in a child process in `role`, checks that the
/// configuration carries `media`, runs the client side, then checks that the engine succeeded
/// and that nothing of the set is left.
fn run(plan: Plan, role: &str, media: Features, client: impl FnOnce(&ClientSet, &str)) {
    common::init_tracing();
    common::watchdog(Duration::from_secs(120));
    let name = common::unique_name(role);
    let cfg = ClientConfig {
        device_count: plan.devices,
        ..ClientConfig::default()
    };
    let set = ShmClient::new().create(None, &name, &cfg).unwrap();
    let server = ChildProc::spawn("child_server", role, &plan.params(&name));
    let config = set.configuration(WAIT).unwrap();
    assert!(config.features.contains(media));
    assert_eq!(
        (config.block_size, config.max_transfer_size),
        (plan.block, plan.max_transfer)
    );
    client(&set, &name);
    set.close().unwrap();
    drop(set);
    assert!(
        server.wait(Duration::from_secs(60)).success(),
        "server process failed"
    );
    common::assert_no_leftovers(&name);
}

fn backup(plan: Plan) {
    run(plan, "backup", Features::WRITE_MEDIA, |set, name| {
        let received = common::client_backup(set, name, plan.devices).unwrap();
        assert!(
            received.iter().all(|&r| r == plan.bytes),
            "received {received:?}"
        );
    });
}

fn restore(plan: Plan) {
    run(plan, "restore", Features::READ_MEDIA, |set, name| {
        common::client_restore(set, name, plan.devices, plan.bytes).unwrap();
    });
}

#[test]
fn backup_1_device() {
    backup(Plan {
        devices: 1,
        block: 65536,
        max_transfer: 1 << 20,
        depth: 4,
        bytes: 64 << 20,
    });
}

#[test]
fn backup_4_devices() {
    backup(Plan {
        devices: 4,
        block: 4096,
        max_transfer: 256 << 10,
        depth: 3,
        bytes: 16 << 20,
    });
}

#[test]
fn backup_64_devices() {
    backup(Plan {
        devices: 64,
        block: 512,
        max_transfer: 64 << 10,
        depth: 2,
        bytes: 1 << 20,
    });
}

#[test]
fn restore_1_device() {
    // Not a multiple of the largest read: the final read is short.
    restore(Plan {
        devices: 1,
        block: 512,
        max_transfer: 1 << 20,
        depth: 1,
        bytes: (48 << 20) + 512 * 7,
    });
}

#[test]
fn restore_4_devices() {
    restore(Plan {
        devices: 4,
        block: 4096,
        max_transfer: 512 << 10,
        depth: 1,
        bytes: (8 << 20) + 4096,
    });
}

#[test]
fn restore_64_devices() {
    restore(Plan {
        devices: 64,
        block: 512,
        max_transfer: 64 << 10,
        depth: 1,
        bytes: 1 << 20,
    });
}
