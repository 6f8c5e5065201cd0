//! The server's side of a test run: what it does ([`Plan`], also passed to a child process),
//! and its set opened and configured over any backend ([`open_and_configure`]).

use std::{
    thread,
    time::{Duration, Instant},
};

use vdi_core::{Error, HResult, ServerBackend, ServerConfig, ServerDeviceSet};

use crate::{device_name, param, param_u64};

/// What a server (engine) run does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Devices in the set.
    pub devices: u32,
    /// The block size.
    pub block: u32,
    /// The maximum transfer size, and the size of each buffer.
    pub max_transfer: u32,
    /// Buffers per device.
    pub depth: u32,
    /// Stream bytes per device (a multiple of the block size).
    pub bytes: u64,
}

impl Plan {
    /// Passes the plan, and the set's name, to a child: the parameters for
    /// [`ChildProc::spawn`](crate::ChildProc::spawn).
    pub fn params(&self, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("VDI_SET", name.to_owned()),
            ("VDI_DEVICES", self.devices.to_string()),
            ("VDI_BLOCK", self.block.to_string()),
            ("VDI_MTS", self.max_transfer.to_string()),
            ("VDI_DEPTH", self.depth.to_string()),
            ("VDI_BYTES", self.bytes.to_string()),
        ]
    }

    /// Reads the set's name and the plan a parent passed.
    ///
    /// # Panics
    ///
    /// If a parameter of [`Plan::params`] is missing or not a number.
    pub fn from_env() -> (String, Self) {
        (
            param("VDI_SET"),
            Self {
                devices: param_u64("VDI_DEVICES") as u32,
                block: param_u64("VDI_BLOCK") as u32,
                max_transfer: param_u64("VDI_MTS") as u32,
                depth: param_u64("VDI_DEPTH") as u32,
                bytes: param_u64("VDI_BYTES"),
            },
        )
    }

    /// The server's configuration of a backup (`backup`) or a restore with the plan's block
    /// and maximum transfer sizes.
    pub fn server_config(&self, backup: bool) -> ServerConfig {
        if backup {
            ServerConfig::backup(self.block, self.max_transfer)
        } else {
            ServerConfig::restore(self.block, self.max_transfer)
        }
    }
}

/// How [`open_and_configure`] retries `Open` while the client has not created the set yet.
#[derive(Debug, Clone, Copy)]
pub struct OpenRetry {
    /// How long it keeps trying.
    pub within: Duration,
    /// The pause between two tries.
    pub every: Duration,
}

/// Opens `name` as the server with `backend`, retrying the open (as `retry` says) until the
/// client has created the set, and configures it with `config` for `plan`: `plan.depth`
/// buffers per device of `plan.max_transfer` bytes requested, every device opened (named by
/// [`device_name`]). Returns the set and its devices in order.
///
/// # Errors
///
/// The first call that fails; `VD_E_INVALID` if the set still does not exist after
/// `retry.within`.
pub fn open_and_configure<S: ServerDeviceSet>(
    backend: &impl ServerBackend<Set = S>,
    name: &str,
    plan: &Plan,
    config: &ServerConfig,
    retry: OpenRetry,
) -> Result<(S, Vec<S::Device>), Error> {
    let deadline = Instant::now() + retry.within;
    let set = loop {
        match backend.open(None, name) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline && e.hresult() == HResult::VD_E_INVALID => {
                thread::sleep(retry.every);
            }
            Err(e) => return Err(e),
        }
    };
    set.begin_configuration(config)?;
    set.request_buffers(plan.max_transfer, 0, plan.depth * plan.devices)?;
    let devices = (0..plan.devices)
        .map(|i| set.open_device(&device_name(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    set.end_configuration()?;
    Ok((set, devices))
}
