//! The client backend the agent speaks VDI through (`--backend`), and what each tells a user
//! whose engine does not come: the one place the agent names its backends (backup and restore
//! are generic over them).
//!
//! - `shm`: vdi-shm, this project's shared memory: what the reference engine speaks, on Unix and
//!   Windows.
//! - `sqlvdi`: SQL Server's own client library: Microsoft's `libsqlvdi.so` through vdi-linux on
//!   Linux, `sqlvdi.dll` (COM) through vdi-win on Windows.
//! - `auto`: `sqlvdi` with `--external` where the library is installed (on Linux: the file
//!   exists; on Windows: always, sqlvdi.dll comes with SQL Server), else `shm`.

use crate::{
    cli::{BackendChoice, EngineArgs},
    failure::Outcome,
};

/// A client backend, chosen.
#[derive(Clone, Debug)]
pub(crate) enum Client {
    /// vdi-shm.
    Shm(vdi_shm::ShmClient),
    /// Microsoft's libsqlvdi.so.
    #[cfg(target_os = "linux")]
    Sqlvdi(vdi_linux::LibSqlVdi),
    /// Microsoft's sqlvdi.dll.
    #[cfg(windows)]
    Sqlvdi(vdi_win::SqlVdi),
}

/// Runs `$body` with `$b` bound to the chosen backend, whichever type it has.
macro_rules! with_client {
    ($client:expr, $b:ident => $body:expr) => {
        match $client {
            $crate::backend::Client::Shm($b) => $body,
            #[cfg(any(target_os = "linux", windows))]
            $crate::backend::Client::Sqlvdi($b) => $body,
        }
    };
}
pub(crate) use with_client;

/// What to tell the user about who may open the set, per backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hints {
    /// The backend's name, for messages.
    pub(crate) backend: &'static str,
    /// Who the engine must be, for the "no engine configured the set" message.
    pub(crate) access: &'static str,
    /// What an abort before the configuration or before a device opened likely means.
    pub(crate) early_abort: Option<&'static str>,
    /// What to do about a set that could not be created (the library not installed, ...).
    pub(crate) create_advice: fn(&vdi_core::Error) -> Option<&'static str>,
}

impl Hints {
    /// `e`, the error of creating the set, with the advice that goes with it.
    pub(crate) fn create_failure(&self, e: &vdi_core::Error) -> String {
        match (self.create_advice)(e) {
            Some(advice) => format!("{e}: {advice}"),
            None => e.to_string(),
        }
    }
}

/// No advice beyond the error itself.
fn no_advice(_: &vdi_core::Error) -> Option<&'static str> {
    None
}

/// vdi-shm's.
pub(crate) const SHM_HINTS: Hints = Hints {
    backend: "vdi-shm",
    access: "on this host, as this user or one admitted with --admit-uid/--admit-gid (SQL \
             Server on Linux runs as mssql, and speaks its own library: --backend sqlvdi)",
    early_abort: None,
    create_advice: no_advice,
};

/// SQL Server on Linux: the rule of vdi-spec.md section 11.
#[cfg(target_os = "linux")]
const LINUX_ACCESS: &str = "SQL Server on Linux opens the set as user mssql: run the agent as \
    mssql, or as a user in group mssql whose own group mssql is in, then restart SQL Server so \
    it picks up the groups (the agent creates the set with umask 0)";

/// SQL Server on Linux, when the set was aborted before it was configured.
#[cfg(target_os = "linux")]
const LINUX_EARLY_ABORT: &str = "if SQL Server could not open the set, the cause is its \
    permissions: SQL Server on Linux opens the set as user mssql, so run the agent as mssql, or \
    as a user in group mssql whose own group mssql is in, then restart SQL Server so it picks up \
    the groups (the agent creates the set with umask 0)";

impl Client {
    /// The backend `args` asks for.
    pub(crate) fn choose(args: &EngineArgs) -> Outcome<Self> {
        let sqlvdi = match args.backend {
            BackendChoice::Shm => false,
            BackendChoice::Sqlvdi => true,
            BackendChoice::Auto => args.external && sqlvdi_installed(args),
        };
        if !sqlvdi {
            return Ok(Self::Shm(shm_client(args)));
        }
        sqlvdi_client(args)
    }

    /// What to tell a user whose engine does not come, or aborts early.
    pub(crate) fn hints(&self) -> Hints {
        match self {
            Self::Shm(_) => SHM_HINTS,
            #[cfg(target_os = "linux")]
            Self::Sqlvdi(_) => Hints {
                backend: "libsqlvdi.so",
                access: LINUX_ACCESS,
                early_abort: Some(LINUX_EARLY_ABORT),
                create_advice: no_advice,
            },
            #[cfg(windows)]
            Self::Sqlvdi(_) => Hints {
                backend: "sqlvdi.dll",
                access: "by the default instance of SQL Server on this host, with sqlvdi.dll \
                         registered and the agent running as a Windows administrator",
                early_abort: None,
                create_advice: com_advice,
            },
        }
    }
}

/// What vdi-win says of a COM failure the user can act on (sqlvdi.dll not registered, ...).
#[cfg(windows)]
fn com_advice(e: &vdi_core::Error) -> Option<&'static str> {
    use vdi_win::{Cause, Op};
    Cause::of(Op::CoCreateInstance, e.hresult())
        .or_else(|| Cause::of(Op::CreateEx, e.hresult()))
        .map(Cause::advice)
}

/// Whether SQL Server's client library is installed, for `--backend auto`.
fn sqlvdi_installed(args: &EngineArgs) -> bool {
    #[cfg(target_os = "linux")]
    {
        vdi_linux::resolve(args.sqlvdi_lib.as_deref()).exists()
    }
    #[cfg(windows)]
    {
        let _ = args;
        true
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = args;
        false
    }
}

#[cfg(target_os = "linux")]
fn sqlvdi_client(args: &EngineArgs) -> Outcome<Client> {
    use crate::failure::{Exit, Failure};
    let path = vdi_linux::resolve(args.sqlvdi_lib.as_deref());
    vdi_linux::LibSqlVdi::load(&path)
        .map(Client::Sqlvdi)
        .map_err(|e| Failure::new(Exit::Usage, format!("--backend sqlvdi: {e}")))
}

#[cfg(windows)]
fn sqlvdi_client(_args: &EngineArgs) -> Outcome<Client> {
    Ok(Client::Sqlvdi(vdi_win::SqlVdi::new()))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn sqlvdi_client(_args: &EngineArgs) -> Outcome<Client> {
    Err(crate::failure::Failure::usage(
        "--backend sqlvdi: SQL Server's VDI client library exists for Linux and Windows only",
    ))
}

/// The shared-memory client, admitting the users the command line names.
pub(crate) fn shm_client(args: &EngineArgs) -> vdi_shm::ShmClient {
    let mut options = vdi_shm::Options::default();
    if let Some(uid) = args.admit_uid {
        options = options.admit_uid(uid);
    }
    if let Some(gid) = args.admit_gid {
        options = options.admit_gid(gid);
    }
    vdi_shm::ShmClient::with_options(options)
}
