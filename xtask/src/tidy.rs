//! `cargo xtask tidy`: repository rules that no compiler checks.
//!
//! - Every `.rs` file starts with a `//!` module doc.
//! - The word `unsafe` as code appears only in `vdi-shm`, `vdi-win`, `vdi-linux`, `vdi-foreign` and two modules of
//!   `vdi-sdk` (`src/ffi.rs`, its C ABI, with the test backend over it; `src/com.rs` and
//!   `src/com/registry.rs`, its COM server); `vdi-core`, `vdi-async`, `vdi-bench`,
//!   `vdi-testkit` and the rest of `vdi-sdk` (`src/sdk.rs`) say `#![forbid(unsafe_code)]`.
//! - `vdi-core` depends on no I/O crate (tokio, memmap2, rustix, libc, windows).
//! - README.md states the MSRV that Cargo.toml has.
//! - No placeholder macros (`todo`, `unimplemented`) in the code.

use std::{fs, path::Path};

/// Crates that may contain `unsafe` code.
const UNSAFE_ALLOWED: &[&str] = &["vdi-shm", "vdi-win", "vdi-linux", "vdi-foreign"];
/// Single files of other crates that may contain `unsafe` code.
const UNSAFE_ALLOWED_FILES: &[&str] = &[
    "vdi-sdk/src/ffi.rs",
    // The COM server (Windows): vtables, raw interface pointers, the registry.
    "vdi-sdk/src/com.rs",
    "vdi-sdk/src/com/registry.rs",
    // The backend over the C ABI: raw pointers, as a C++ client has them.
    "vdi-sdk/src/cabi.rs",
    // The conformance suite's probes of command pointers through that backend.
    "vdi-sdk/tests/conformance/main.rs",
];
/// Crates that must forbid unsafe code, and the file that says so.
const UNSAFE_FORBIDDEN: &[(&str, &str)] = &[
    ("vdi-core", "src/lib.rs"),
    ("vdi-async", "src/lib.rs"),
    ("vdi-bench", "src/main.rs"),
    ("vdi-testkit", "src/lib.rs"),
    ("vdi-sdk", "src/sdk.rs"),
];
/// Dependencies vdi-core must not have: it does no I/O.
const CORE_BANNED_DEPS: &[&str] = &[
    "tokio",
    "memmap2",
    "rustix",
    "libc",
    "windows",
    "windows-sys",
];

pub(crate) fn run(root: &Path) -> Result<(), String> {
    println!("\n=== xtask: tidy");
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            collect_rs(&path, &mut files);
        }
    }
    for file in &files {
        let rel = file.strip_prefix(root).unwrap_or(file);
        let rel_str = rel.to_string_lossy().replace('\\', "/");
        let Ok(text) = fs::read_to_string(file) else {
            problems.push(format!("{rel_str}: not UTF-8"));
            continue;
        };
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{rel_str}: does not start with a `//!` module doc"));
        }
        let krate = rel_str.split('/').next().unwrap_or("");
        let is_tidy = rel_str.starts_with("xtask/src/tidy.rs");
        if !UNSAFE_ALLOWED.contains(&krate)
            && !UNSAFE_ALLOWED_FILES.contains(&rel_str.as_str())
            && !is_tidy
            && has_unsafe_code(&text)
        {
            problems.push(format!(
                "{rel_str}: `unsafe` outside vdi-shm, vdi-win, vdi-linux, vdi-foreign and vdi-sdk's ffi and com modules"
            ));
        }
        if !is_tidy
            && (text.contains(concat!("todo", "!("))
                || text.contains(concat!("unimplemented", "!(")))
        {
            problems.push(format!("{rel_str}: todo!/unimplemented! left in the code"));
        }
    }
    for (krate, root_file) in UNSAFE_FORBIDDEN {
        match fs::read_to_string(root.join(krate).join(root_file)) {
            Ok(text) if text.contains("#![forbid(unsafe_code)]") => {}
            _ => problems.push(format!(
                "{krate}/{root_file}: missing #![forbid(unsafe_code)]"
            )),
        }
    }
    check_core_deps(root, &mut problems);
    check_readme_msrv(root, &mut problems);

    if problems.is_empty() {
        println!("=== xtask: tidy: ok ({} files)", files.len());
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        Err(format!("tidy found {} problem(s)", problems.len()))
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rs(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Whether `unsafe` appears as a keyword outside comments and string literals (line-based: a
/// line whose code part, before any `//`, holds `unsafe ` or `unsafe{`).
fn has_unsafe_code(text: &str) -> bool {
    text.lines().any(|line| {
        let code = strip_strings(line);
        let code = code.split("//").next().unwrap_or("").trim();
        if code.starts_with('*')
            || code.contains("forbid(unsafe_code)")
            || code.contains("deny(unsafe")
        {
            return false;
        }
        let mut rest = code;
        while let Some(i) = rest.find("unsafe") {
            let before = rest[..i].chars().last();
            let after = rest[i + 6..].chars().next();
            let word_start = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '"'));
            let word_end = matches!(after, Some(' ' | '{' | '\n') | None);
            if word_start && word_end {
                return true;
            }
            rest = &rest[i + 6..];
        }
        false
    })
}

/// The line with the contents of its string literals removed (escapes honoured; a literal that
/// goes on past the line ends it).
fn strip_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
                out.push(c);
            }
        } else {
            if c == '"' {
                in_str = true;
            }
            out.push(c);
        }
    }
    out
}

fn check_core_deps(root: &Path, problems: &mut Vec<String>) {
    let Ok(manifest) = fs::read_to_string(root.join("vdi-core/Cargo.toml")) else {
        problems.push("vdi-core/Cargo.toml: cannot read".into());
        return;
    };
    let mut in_deps = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps =
                t == "[dependencies]" || t.starts_with("[target.") && t.ends_with(".dependencies]");
            continue;
        }
        if in_deps {
            let dep = t.split(['=', '.', ' ']).next().unwrap_or("");
            if CORE_BANNED_DEPS.contains(&dep) {
                problems.push(format!(
                    "vdi-core depends on `{dep}`, but vdi-core does no I/O"
                ));
            }
        }
    }
}

fn check_readme_msrv(root: &Path, problems: &mut Vec<String>) {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let Some(msrv) = manifest.lines().find_map(|l| {
        l.trim().strip_prefix("rust-version").map(|r| {
            r.trim_start_matches([' ', '='])
                .trim_matches('"')
                .to_string()
        })
    }) else {
        problems.push("Cargo.toml: no rust-version in [workspace.package]".into());
        return;
    };
    let readme = fs::read_to_string(root.join("README.md")).unwrap_or_default();
    if !readme.contains(&format!("Rust {msrv}")) {
        problems.push(format!(
            "README.md does not state the MSRV as `Rust {msrv}` (Cargo.toml has {msrv})"
        ));
    }
}
