//! Builds the C++ half of libsqlvdi.so and sets the symbols the library exports.
//!
//! - `cpp/sqlvdi.cpp` (the classes `ClientVirtualDeviceSet` and `ClientVirtualDevice`) is
//!   compiled by `cc` without exceptions or RTTI, and linked whole into the cdylib (nothing on
//!   the Rust side refers to it, so a plain static link would drop it).
//! - The linker gets a version script, `sqlvdi.map` with the Rust side's `vdi_sdk_*` functions
//!   (read from `src/ffi.rs`) added to its `local` list: rustc exports every `#[no_mangle]`
//!   function of a cdylib, and naming them `local` is what hides them again, so that the
//!   library exports the SDK's members and nothing else.
//! - The library's soname is `libsqlvdi.so`, the name clients link with (`-lsqlvdi`).

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=cpp/sqlvdi.cpp");
    println!("cargo:rerun-if-changed=include/vdi_sdk.h");
    println!("cargo:rerun-if-changed=sqlvdi.map");
    println!("cargo:rerun-if-changed=src/ffi.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    cc::Build::new()
        .cpp(true)
        .std("c++11")
        .file(manifest.join("cpp/sqlvdi.cpp"))
        .include(manifest.join("include"))
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .cpp_link_stdlib(None)
        .cargo_metadata(false)
        .compile("sqlvdi_cpp");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static:+whole-archive=sqlvdi_cpp");

    let ffi = fs::read_to_string(manifest.join("src/ffi.rs")).expect("src/ffi.rs");
    let rust_fns: Vec<&str> = ffi
        .lines()
        .filter_map(|l| l.split("extern \"C\" fn ").nth(1))
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.starts_with("vdi_sdk_"))
        .collect();
    assert!(
        !rust_fns.is_empty(),
        "no vdi_sdk_* functions found in src/ffi.rs"
    );
    let map = fs::read_to_string(manifest.join("sqlvdi.map")).expect("sqlvdi.map");
    let hidden: String = rust_fns.iter().map(|n| format!("    {n};\n")).collect();
    let map = map.replacen("  local:\n", &format!("  local:\n{hidden}"), 1);
    let script = out.join("sqlvdi.map");
    fs::write(&script, map).expect("write the version script");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        script.display()
    );
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsqlvdi.so");
}
