//! Builds the C++ shim (`cpp/shim.cpp`) on Linux: a C ABI over the SDK's C++ classes, which it
//! finds in the library with `dlopen` and `dlsym`.
//!
//! The shim is compiled with exceptions (it catches every one the library throws) against
//! vdi-sdk's declaration of the SDK (`vdi-sdk/include/vdi_sdk.h`, the one place the SDK's
//! types are written down), and links the C++ runtime and libdl.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=cpp/shim.cpp");
    println!("cargo:rerun-if-changed=../vdi-sdk/include/vdi_sdk.h");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    cc::Build::new()
        .cpp(true)
        .std("c++11")
        .file(manifest.join("cpp/shim.cpp"))
        .include(manifest.join("../vdi-sdk/include"))
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .compile("vdi_linux_shim");
    println!("cargo:rustc-link-lib=dylib=dl");
}
