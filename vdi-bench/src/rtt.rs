//! Command round trips: the server sends, the client gets and completes, the server sees the
//! completion. Two groups, each run interleaved (A B C D, then D C B A, ...):
//!
//! - **spinning**: both sides spin. vdi-shm against the cache-line floor, iceoryx2 and a Unix
//!   socket whose both ends poll with non-blocking reads.
//! - **asleep**: before each round trip the server spins through a pause long enough for the
//!   client to be asleep in the kernel (its core idle); the client never spins, the server
//!   spins for the answer. vdi-shm against the futex floor, iceoryx2 with its event service,
//!   and a Unix socket whose client blocks in `read`.

use serde::Serialize;

use crate::{
    copy,
    floor::{self, Floor},
    iox,
    plan::Plan,
    shm,
    util::{self, Count, Latency, Result},
};

/// One transport's round trips in a group.
#[derive(Debug, Serialize)]
pub(crate) struct Variant {
    /// Short key (`vdi-shm`, `cache-line`, ...).
    pub(crate) key: &'static str,
    /// What the row shows.
    pub(crate) label: String,
    /// Percentiles over the samples of every round; `None` if it could not run.
    pub(crate) latency: Option<Latency>,
    /// Why it could not run.
    pub(crate) error: Option<String>,
    /// The median of each round.
    pub(crate) round_p50_ns: Vec<f64>,
    /// The 99th percentile of each round.
    pub(crate) round_p99_ns: Vec<f64>,
}

/// vdi-shm against one other row: medians of the per-round ratios.
#[derive(Debug, Serialize)]
pub(crate) struct Ratio {
    /// The other row's key.
    pub(crate) against: &'static str,
    /// Median over rounds of vdi-shm's p50 / the other's p50.
    pub(crate) p50: f64,
    /// The same for p99.
    pub(crate) p99: f64,
    /// Each round's p50 ratio.
    pub(crate) per_round_p50: Vec<f64>,
}

/// One group of interleaved round-trip rows.
#[derive(Debug, Serialize)]
pub(crate) struct Group {
    /// `spinning` or `asleep`.
    pub(crate) name: &'static str,
    /// Interleaved rounds.
    pub(crate) rounds: usize,
    /// Timed round trips per row and round, at most (fewer when a row hits its time limit).
    pub(crate) per_round: usize,
    /// The rows; the first is vdi-shm.
    pub(crate) variants: Vec<Variant>,
    /// vdi-shm against each other row.
    pub(crate) ratios: Vec<Ratio>,
}

type Run<'a> = Box<dyn Fn() -> Result<Vec<u64>> + 'a>;

/// One row of a group: a transport and how to measure it.
pub(crate) struct Row<'a> {
    pub(crate) key: &'static str,
    pub(crate) label: String,
    /// A row that may fail without failing the run (iceoryx2: a library outside our control).
    pub(crate) optional: bool,
    pub(crate) run: Run<'a>,
}

/// Both groups.
pub(crate) fn run(plan: &Plan) -> Result<Vec<Group>> {
    let c = Count {
        warmup: plan.rtt_warmup,
        n: plan.rtt_spin_n,
        limit: plan.rtt_spin_limit,
        pause: None,
    };
    let spinning = vec![
        Row {
            key: "vdi-shm",
            label: "vdi-shm, both sides spinning".into(),
            optional: false,
            run: Box::new(move || shm::round_trips(c, shm::SPIN_ALWAYS)),
        },
        Row {
            key: "cache-line",
            label: "cache line ping-pong (floor)".into(),
            optional: false,
            run: Box::new(move || floor::round_trips(Floor::CacheLine, c)),
        },
        Row {
            key: "iceoryx2",
            label: "iceoryx2 0.10 pub/sub, busy-polling".into(),
            optional: true,
            run: Box::new(move || iox::round_trips(c)),
        },
        Row {
            key: "socket",
            label: "Unix socket, both sides polling".into(),
            optional: false,
            run: Box::new(move || copy::round_trips(c, true)),
        },
    ];
    let spin = group("spinning", plan.rtt_spin_rounds, c.n, spinning)?;

    let c = Count {
        warmup: plan.rtt_warmup.min(100),
        n: plan.rtt_asleep_n,
        limit: plan.rtt_asleep_limit,
        pause: Some(plan.asleep_pause),
    };
    let asleep = vec![
        Row {
            key: "vdi-shm",
            label: "vdi-shm, client asleep".into(),
            optional: false,
            run: Box::new(move || shm::round_trips(c, 0)),
        },
        Row {
            key: "futex",
            label: "futex ping-pong (floor)".into(),
            optional: false,
            run: Box::new(move || floor::round_trips(Floor::Futex, c)),
        },
        Row {
            key: "iceoryx2",
            label: "iceoryx2 0.10 pub/sub + event listener".into(),
            optional: true,
            run: Box::new(move || iox::round_trips(c)),
        },
        Row {
            key: "socket",
            label: "Unix socket, client blocking in read".into(),
            optional: false,
            run: Box::new(move || copy::round_trips(c, false)),
        },
    ];
    let sleep = group("asleep", plan.rtt_asleep_rounds, c.n, asleep)?;
    Ok(vec![spin, sleep])
}

/// Runs `rows` interleaved for `rounds` rounds; the first row's ratios against each other.
pub(crate) fn group(
    name: &'static str,
    rounds: usize,
    per_round: usize,
    rows: Vec<Row<'_>>,
) -> Result<Group> {
    let k = rows.len();
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); k];
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut errors: Vec<Option<String>> = vec![None; k];
    for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..k).collect()
        } else {
            (0..k).rev().collect()
        };
        for i in order {
            let row = &rows[i];
            if errors[i].is_some() {
                continue;
            }
            match (row.run)() {
                Ok(s) => {
                    let l = Latency::of(&s);
                    eprintln!(
                        "  round trip, {name}, round {}/{rounds}: {:<42} p50 {:>9} p99 {:>9}",
                        r + 1,
                        row.label,
                        fmt_ns(l.p50_ns),
                        fmt_ns(l.p99_ns)
                    );
                    p50[i].push(l.p50_ns);
                    p99[i].push(l.p99_ns);
                    samples[i].extend(s);
                }
                Err(e) if row.optional => {
                    eprintln!("  round trip, {name}: {} skipped: {e}", row.key);
                    errors[i] = Some(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
    }
    let ratios = (1..k)
        .filter(|&i| errors[i].is_none())
        .map(|i| {
            let per_round: Vec<f64> = p50[0].iter().zip(&p50[i]).map(|(a, b)| a / b).collect();
            let per_round_99: Vec<f64> = p99[0].iter().zip(&p99[i]).map(|(a, b)| a / b).collect();
            Ratio {
                against: rows[i].key,
                p50: util::median(&per_round),
                p99: util::median(&per_round_99),
                per_round_p50: per_round,
            }
        })
        .collect();
    let variants = rows
        .into_iter()
        .zip(samples)
        .zip(p50.into_iter().zip(p99))
        .zip(errors)
        .map(|(((row, s), (p50, p99)), error)| Variant {
            key: row.key,
            label: row.label,
            latency: (!s.is_empty()).then(|| Latency::of(&s)),
            error,
            round_p50_ns: p50,
            round_p99_ns: p99,
        })
        .collect();
    Ok(Group {
        name,
        rounds,
        per_round,
        variants,
        ratios,
    })
}

/// Nanoseconds for people: `431 ns`, `34.0 µs`, `1.20 ms`.
pub(crate) fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "–".into()
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}
