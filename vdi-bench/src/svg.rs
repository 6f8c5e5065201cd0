//! Hand-written SVG plots (no plotting dependency): horizontal bars on a log axis for the
//! round trips, grouped vertical bars for throughput, lines for growth with devices.

use std::fmt::Write as _;

use crate::{asynch, job, rtt, scale, streaming};

const COLORS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
const FONT: &str = "font-family=\"sans-serif\" font-size=\"12\"";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn open(w: f64, h: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">"
    );
    let _ = writeln!(
        s,
        "<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/><text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        w / 2.0,
        esc(title)
    );
    s
}

/// Ticks 1-2-5 from 0 to at least `max`.
fn linear_ticks(max: f64) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = 0.0;
    while t < max + step * 0.999 {
        v.push(t);
        t += step;
    }
    v
}

fn tick_text(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One horizontal bar per row on a log axis: the bar to p50, a whisker to p99.
fn latency_bars(title: &str, rows: &[(String, f64, f64)]) -> String {
    let (left, right, top, row_h) = (290.0, 40.0, 40.0, 34.0);
    let w = 900.0;
    let h = top + row_h * rows.len() as f64 + 50.0;
    let vals: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.1, r.2])
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = vals.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (l0, l1) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );
    let x = |v: f64| {
        left + (v.max(l0).log10() - l0.log10()) / (l1.log10() - l0.log10()) * (w - left - right)
    };
    let mut s = open(w, h, title);
    let bottom = top + row_h * rows.len() as f64;
    let mut t = l0;
    while t <= l1 * 1.0001 {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\" {FONT}>{2}</text>",
            x(t),
            bottom + 16.0,
            esc(&rtt::fmt_ns(t))
        );
        t *= 10.0;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" {FONT}>bar: p50, whisker: p99 (log scale)</text>",
        left + (w - left - right) / 2.0,
        bottom + 36.0
    );
    for (i, (label, p50, p99)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" {FONT}>{}</text>",
            left - 8.0,
            y + row_h / 2.0 + 4.0,
            esc(label)
        );
        if p50.is_finite() {
            let _ = writeln!(
                s,
                "<rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
                y + 6.0,
                (x(*p50) - left).max(1.0),
                row_h - 12.0
            );
            let _ = writeln!(
                s,
                "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"black\"/><line x1=\"{2:.1}\" y1=\"{3:.1}\" x2=\"{2:.1}\" y2=\"{4:.1}\" stroke=\"black\"/>",
                x(*p50),
                y + row_h / 2.0,
                x(*p99),
                y + 10.0,
                y + row_h - 10.0
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" {FONT}>{}</text>",
                x(p99.max(*p50)) + 6.0,
                y + row_h / 2.0 + 4.0,
                esc(&rtt::fmt_ns(*p50))
            );
        } else {
            let _ = writeln!(
                s,
                "<text x=\"{left}\" y=\"{:.1}\" {FONT} fill=\"#888\">not measured</text>",
                y + row_h / 2.0 + 4.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Grouped vertical bars: one group per category, one bar per series.
fn grouped_bars(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(&str, Vec<f64>)],
) -> String {
    let (left, right, top, bottom_pad) = (70.0, 20.0, 60.0, 60.0);
    let min_group = (series.len() as f64 * 16.0 + 24.0).max(60.0);
    let w = (left + right + min_group * categories.len() as f64).max(560.0);
    let group_w = (w - left - right) / categories.len().max(1) as f64;
    let plot_h = 300.0;
    let h = top + plot_h + bottom_pad;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let ticks = linear_ticks(max);
    let top_val = *ticks.last().unwrap_or(&1.0);
    let y = |v: f64| top + plot_h - v / top_val * plot_h;
    let mut s = open(w, h, title);
    for t in &ticks {
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\" {FONT}>{4}</text>",
            y(*t),
            w - right,
            left - 6.0,
            y(*t) + 4.0,
            tick_text(*t)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{0}\" transform=\"rotate(-90 16 {0})\" text-anchor=\"middle\" {FONT}>{1}</text>",
        top + plot_h / 2.0,
        esc(y_label)
    );
    // Legend.
    let mut lx = left;
    for (i, (name, _)) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"34\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"44\" {FONT}>{}</text>",
            COLORS[i % COLORS.len()],
            lx + 16.0,
            esc(name)
        );
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    for (c, cat) in categories.iter().enumerate() {
        // The bars of a group, centred in its slot.
        let gx = left + group_w * c as f64 + (group_w - 16.0 * series.len() as f64) / 2.0;
        for (i, (_, vals)) in series.iter().enumerate() {
            let v = vals.get(c).copied().unwrap_or(f64::NAN);
            if !v.is_finite() {
                continue;
            }
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"{:.1}\" fill=\"{}\"><title>{}: {v:.2}</title></rect>",
                gx + 16.0 * i as f64,
                y(v),
                (top + plot_h - y(v)).max(0.5),
                COLORS[i % COLORS.len()],
                esc(&format!("{cat} {}", series[i].0))
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" {FONT}>{}</text>",
            gx + 8.0 * series.len() as f64,
            top + plot_h + 18.0,
            esc(cat)
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>",
        top + plot_h,
        w - right
    );
    s.push_str("</svg>\n");
    s
}

/// Lines over a log2 axis of device counts, in a panel at (`ox`, `oy`) of `w` x `h`.
fn line_panel(
    s: &mut String,
    (ox, oy, w, h): (f64, f64, f64, f64),
    title: &str,
    xs: &[u32],
    series: &[(&str, Vec<f64>)],
    y_text: &dyn Fn(f64) -> String,
) {
    let (left, right, top, bottom) = (80.0, 20.0, 50.0, 45.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let ticks = linear_ticks(max);
    let top_val = *ticks.last().unwrap_or(&1.0);
    let x_max = f64::from(*xs.iter().max().unwrap_or(&1)).log2().max(1.0);
    let x = |d: u32| ox + left + f64::from(d).log2() / x_max * plot_w;
    let y = |v: f64| oy + top + plot_h - v / top_val * plot_h;
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        ox + w / 2.0,
        oy + 18.0,
        esc(title)
    );
    for t in &ticks {
        let _ = writeln!(
            s,
            "<line x1=\"{0}\" y1=\"{1:.1}\" x2=\"{2}\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{3}\" y=\"{4:.1}\" text-anchor=\"end\" {FONT}>{5}</text>",
            ox + left,
            y(*t),
            ox + w - right,
            ox + left - 6.0,
            y(*t) + 4.0,
            esc(&y_text(*t))
        );
    }
    for &d in xs {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" {FONT}>{d}</text>",
            x(d),
            oy + top + plot_h + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" {FONT}>devices</text>",
        ox + left + plot_w / 2.0,
        oy + h - 8.0
    );
    let mut ly = oy + top + 4.0;
    for (i, (name, vals)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = xs
            .iter()
            .zip(vals)
            .filter(|(_, v)| v.is_finite())
            .map(|(&d, &v)| format!("{:.1},{:.1}", x(d), y(v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            pts.join(" ")
        );
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
        let _ = writeln!(
            s,
            "<rect x=\"{0}\" y=\"{1:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{2}\" y=\"{3:.1}\" {FONT}>{4}</text>",
            ox + left + 10.0,
            ly,
            ox + left + 26.0,
            ly + 5.0,
            esc(name)
        );
        ly += 16.0;
    }
}

/// `rtt-<group>.svg` for each round-trip group.
pub(crate) fn round_trips(g: &rtt::Group) -> String {
    let rows: Vec<(String, f64, f64)> = g
        .variants
        .iter()
        .map(|v| {
            let (p50, p99) = v
                .latency
                .map_or((f64::NAN, f64::NAN), |l| (l.p50_ns, l.p99_ns));
            (v.label.clone(), p50, p99)
        })
        .collect();
    latency_bars(
        &format!("Round trip between two processes, {}", g.name),
        &rows,
    )
}

/// `streaming.svg`.
pub(crate) fn streaming(cells: &[streaming::Cell]) -> String {
    let cats: Vec<String> = cells
        .iter()
        .map(|c| {
            let size = if c.transfer >= 1 << 20 {
                format!("{}M", c.transfer >> 20)
            } else {
                format!("{}K", c.transfer >> 10)
            };
            format!("{size} ×{}", c.devices)
        })
        .collect();
    let col = |f: fn(&streaming::Cell) -> f64| cells.iter().map(f).collect::<Vec<_>>();
    grouped_bars(
        "Streaming a backup: GB/s by transfer size × devices",
        "GB/s",
        &cats,
        &[
            ("vdi-shm", col(|c| c.shm_gbps)),
            ("pipe", col(|c| c.pipe_gbps)),
            ("Unix socket", col(|c| c.socket_gbps)),
            ("pipeline bound", col(|c| c.bound_gbps)),
        ],
    )
}

/// `async.svg`.
pub(crate) fn asynchronous(rows: &[asynch::Row]) -> String {
    let cats: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.transfer >= 1 << 20 {
                format!("{} MiB", r.transfer >> 20)
            } else {
                format!("{} KiB", r.transfer >> 10)
            }
        })
        .collect();
    grouped_bars(
        "One-device backup: vdi-async against the blocking API",
        "GB/s",
        &cats,
        &[
            ("blocking", rows.iter().map(|r| r.blocking_gbps).collect()),
            ("vdi-async", rows.iter().map(|r| r.async_gbps).collect()),
        ],
    )
}

/// `job.svg`: the main job's rows on tmpfs (backup B, restore R, verify V; devices × transfer),
/// the agent against the same work alone and against the bound, in GB/s.
pub(crate) fn job(rows: &[job::Row]) -> String {
    let rows: Vec<&job::Row> = rows
        .iter()
        .filter(|r| r.place == "tmpfs" && matches!(r.op, "backup" | "restore" | "verify"))
        .collect();
    let cats: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {}×{}M",
                r.op[..1].to_uppercase(),
                r.devices,
                r.transfer >> 20
            )
        })
        .collect();
    let bound = |r: &job::Row| r.io_gbps.min(r.cpu_gbps);
    grouped_bars(
        "The main job on tmpfs: B backup, R restore, V verify (devices × MiB transfers)",
        "GB/s",
        &cats,
        &[
            ("vdi-agent", rows.iter().map(|r| r.agent_gbps).collect()),
            (
                "the same work alone",
                rows.iter().map(|r| r.work_gbps).collect(),
            ),
            (
                "bound (slower of I/O alone, CPU alone)",
                rows.iter().map(|r| bound(r)).collect(),
            ),
        ],
    )
}

/// `scale.svg`: memory and per-command cost against devices.
pub(crate) fn scale(rows: &[scale::ScaleRow]) -> String {
    let xs: Vec<u32> = rows.iter().map(|r| r.devices).collect();
    let (w, h) = (1000.0, 380.0);
    let mut s = open(w, h, "vdi-shm as devices grow");
    line_panel(
        &mut s,
        (0.0, 30.0, w / 2.0, h - 30.0),
        "control segment (KiB; buffers add what the server asks for)",
        &xs,
        &[(
            "header, device table and every device's rings",
            rows.iter()
                .map(|r| r.control_bytes as f64 / 1024.0)
                .collect(),
        )],
        &tick_text,
    );
    line_panel(
        &mut s,
        (w / 2.0, 30.0, w / 2.0, h - 30.0),
        "cost per command",
        &xs,
        &[
            (
                "round trip p50, device 0",
                rows.iter().map(|r| r.rtt.p50_ns).collect(),
            ),
            (
                "all devices busy, per command",
                rows.iter().map(|r| r.ns_per_command_all_busy).collect(),
            ),
        ],
        &|v| rtt::fmt_ns(v),
    );
    s.push_str("</svg>\n");
    s
}
