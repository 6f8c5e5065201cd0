//! `cargo xtask bench [--quick] [--no-iceoryx2] [--only SECTIONS] [--save]`: vdi-shm side by
//! side with the alternatives (the vdi-bench crate), in one run.
//!
//! Builds vdi-bench in release with its `iceoryx2` feature (the comparison-only dependency CI
//! never builds; its first build takes a minute or two) and runs it, writing to `target/bench/`:
//! `results.md`, `results.json` and the SVG plots. `--quick` is a ~15 s run with fewer samples,
//! `--no-iceoryx2` leaves iceoryx2 out (no heavy build; its rows say so), `--only rtt,streaming`
//! runs those sections alone (vdi-bench's names), and `--save` copies the results into
//! `vdi-bench/results/`, the committed run BENCHMARKS.md shows.
//!
//! The build has its own target directory (`target/bench-build`) and aligns every loop to 64
//! bytes (`-Cllvm-args=-align-loops=64`): otherwise a hot loop's speed depends on where the
//! linker happened to put it, and any change anywhere in the binary moves the numbers. Measured:
//! the same checksum loop, the same source, ran at 61 GB/s in one build and 39 GB/s in another
//! whose only difference was vdi-shm's code, because its loop straddled a 64-byte line.
//!
//! The numbers are only as quiet as the machine: the command prints the load average before
//! and after, and results.md records both.

use std::{fs, path::Path, time::Instant};

/// Where the results go, relative to the workspace root.
const OUT: &str = "target/bench";
/// Where `--save` copies them (committed).
const SAVED: &str = "vdi-bench/results";
/// The bench's own target directory: its flags differ from a plain release build's.
const TARGET: &str = "target/bench-build";
/// Every loop aligned to a 64-byte line, so that where one lands does not move the numbers.
const RUSTFLAGS: &str = "-Cllvm-args=-align-loops=64";

/// The options of `cargo xtask bench`.
#[derive(Debug, Default)]
pub(crate) struct Options {
    quick: bool,
    no_iceoryx2: bool,
    save: bool,
    /// `--only`: the sections to run (vdi-bench's `--only`).
    only: Option<String>,
}

/// Parses the arguments after `bench`.
pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-iceoryx2" => o.no_iceoryx2 = true,
            "--save" => o.save = true,
            "--only" => {
                o.only = Some(
                    it.next()
                        .ok_or("--only takes a list of sections, e.g. --only rtt,streaming")?
                        .clone(),
                );
            }
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench; expected --quick, --no-iceoryx2, \
                     --only SECTIONS, --save"
                ));
            }
        }
    }
    Ok(o)
}

/// Builds and runs the benchmarks; with `--save`, copies the results next to BENCHMARKS.md.
pub(crate) fn run(root: &Path, o: &Options) -> Result<(), String> {
    let start = Instant::now();
    let mut build = crate::cargo();
    // vdi-agent too: the main job's rows run its release binary; vdi-sdk's libsqlvdi.so for the
    // row of the agent through it.
    build.args([
        "build",
        "--release",
        "-p",
        "vdi-bench",
        "-p",
        "vdi-agent",
        "-p",
        "vdi-sdk",
    ]);
    if !o.no_iceoryx2 {
        build.args(["--features", "vdi-bench/iceoryx2"]);
    }
    build
        .env("CARGO_TARGET_DIR", root.join(TARGET))
        .env("RUSTFLAGS", RUSTFLAGS);
    crate::stage(
        "bench: build vdi-bench, vdi-agent and libsqlvdi.so (release)",
        build,
    )?;

    let exe = root.join(TARGET).join("release/vdi-bench");
    let mut bench = std::process::Command::new(&exe);
    bench.args(["--out", OUT]);
    // The S3 rows' server (installed as objstore-test installs it); without it they are skipped.
    match crate::objstore::s3s_fs(root) {
        Ok(bin) => {
            bench.env("VDI_S3S_FS", bin);
        }
        Err(why) => println!("=== xtask: bench: no s3s-fs ({why}): the S3 rows are skipped"),
    }
    if o.quick {
        bench.arg("--quick");
    }
    if let Some(only) = &o.only {
        bench.args(["--only", only]);
    }
    crate::stage("bench: run", bench)?;

    if o.save {
        save(root)?;
    }
    println!(
        "\n=== xtask: bench done in {:.0}s; results in {OUT}/results.md{}",
        start.elapsed().as_secs_f64(),
        if o.save {
            format!(", copied to {SAVED}/")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Copies results.md, results.json and the plots from `target/bench/` to `vdi-bench/results/`.
fn save(root: &Path) -> Result<(), String> {
    let from = root.join(OUT);
    let to = root.join(SAVED);
    fs::create_dir_all(&to).map_err(|e| format!("mkdir {}: {e}", to.display()))?;
    let entries = fs::read_dir(&from).map_err(|e| format!("read {}: {e}", from.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let keep = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| matches!(x, "md" | "json" | "svg"));
        if keep && let Some(name) = path.file_name() {
            fs::copy(&path, to.join(name))
                .map_err(|e| format!("copy {} to {}: {e}", path.display(), to.display()))?;
        }
    }
    Ok(())
}
