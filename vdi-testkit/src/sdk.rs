//! Where the workspace's own `libsqlvdi.so` (vdi-sdk's cdylib) is, for the tests that load it
//! as a foreign library.

use std::path::PathBuf;

/// The environment variable that names the library for the tests (the same one vdi-linux
/// reads).
pub const SQLVDI_LIB_ENV: &str = "VDI_SQLVDI_LIB";

/// vdi-sdk's `libsqlvdi.so` as this build made it: `VDI_SQLVDI_LIB` when set, else beside the
/// test binary (`cargo test` builds a workspace cdylib into `target/<profile>/deps`), else in
/// `target/<profile>` (`cargo build -p vdi-sdk`). Panics, saying how to build it, when there is
/// none.
pub fn built_sqlvdi_lib() -> PathBuf {
    if let Some(p) = std::env::var_os(SQLVDI_LIB_ENV) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    let candidates = [
        deps.join("libsqlvdi.so"),
        deps.parent()
            .map_or_else(|| deps.join("libsqlvdi.so"), |d| d.join("libsqlvdi.so")),
    ];
    candidates
        .iter()
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no libsqlvdi.so at {candidates:?}: build it with `cargo build -p vdi-sdk` (or \
                 run the workspace's tests, which build it), or name it with {SQLVDI_LIB_ENV}"
            )
        })
}
