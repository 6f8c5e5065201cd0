//! Keeps the benchmark harness from rotting: runs `vdi-bench --smoke` (every section, every
//! transport and child role, a few iterations each) and checks that it wrote its reports.
//! Nothing here looks at a timing.

#[cfg(target_os = "linux")]
#[test]
fn smoke_run_writes_every_report() {
    let out = tempfile::tempdir().expect("temporary directory");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_vdi-bench"))
        .args(["--smoke", "--out"])
        .arg(out.path())
        .output()
        .expect("run vdi-bench");
    assert!(
        run.status.success(),
        "vdi-bench --smoke failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    for key in [
        "round_trip",
        "streaming",
        "async",
        "scale",
        "setup",
        "aims",
        "machine",
    ] {
        assert!(!v[key].is_null(), "results.json has no `{key}`");
    }
    assert_eq!(v["round_trip"].as_array().map(Vec::len), Some(2));
    assert!(
        v["streaming"]
            .as_array()
            .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["shm_gbps"].is_number()))
    );

    let md = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    for heading in [
        "## Aims",
        "## Round trip",
        "## Streaming",
        "## Async",
        "## Scale",
        "## Set-up",
    ] {
        assert!(md.contains(heading), "results.md has no `{heading}`");
    }
    for plot in [
        "rtt-spinning.svg",
        "rtt-asleep.svg",
        "streaming.svg",
        "async.svg",
        "scale.svg",
    ] {
        let svg = std::fs::read_to_string(out.path().join(plot)).expect(plot);
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot} is not an SVG document"
        );
    }
}
