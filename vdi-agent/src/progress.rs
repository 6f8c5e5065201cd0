//! Progress bars on the terminal: one per device and a total, fed from counters the data threads
//! bump, redrawn a few times a second.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// Bytes moved per device, and bytes stored in all; the data threads add to them.
#[derive(Debug)]
pub(crate) struct Counters {
    devices: Vec<AtomicU64>,
    stored: AtomicU64,
}

impl Counters {
    pub(crate) fn new(devices: u32) -> Arc<Self> {
        Arc::new(Self {
            devices: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            stored: AtomicU64::new(0),
        })
    }

    /// Adds `n` bytes to device `i`, and `stored` to the bytes stored.
    pub(crate) fn add(&self, i: u32, n: u64, stored: u64) {
        if let Some(c) = self.devices.get(i as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        if stored != 0 {
            self.stored.fetch_add(stored, Ordering::Relaxed);
        }
    }

    /// The bytes stored so far (stripe files, headers included).
    pub(crate) fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    pub(crate) fn get(&self, i: u32) -> u64 {
        self.devices
            .get(i as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The bars of one operation; they disappear when it is dropped or finished.
#[derive(Debug)]
pub(crate) struct Progress {
    multi: MultiProgress,
    task: Option<JoinHandle<()>>,
    bars: Vec<ProgressBar>,
}

impl Progress {
    /// Starts drawing `counters` under the title `what`, with the expected bytes per device if
    /// known, and (`show_stored`) a line with the bytes stored and the ratio. Draws nothing when
    /// `enabled` is false or stderr is not a terminal.
    ///
    /// Every line fits 80 columns; a bar never passes 100% (a device that moves more than
    /// expected stretches its bar, and the total's, which is always the sum of the devices');
    /// a bar with a known length shows the time left (`left`), one without the time elapsed
    /// (`elapsed`). Rates are MiB/s, as in the summary line.
    pub(crate) fn start(
        what: &str,
        counters: &Arc<Counters>,
        expected: Option<Vec<u64>>,
        enabled: bool,
        show_stored: bool,
    ) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let n = counters.devices.len();
        let known: Vec<Option<u64>> = (0..n)
            .map(|i| expected.as_ref().and_then(|e| e.get(i).copied()))
            .collect();
        let total_len = expected.as_ref().map(|e| e.iter().sum::<u64>());
        let style = |with_len: bool| {
            // 9 + 1 + 22 + 1 + 21 + 1 + 12 + 1 + 11 = 79 columns at most.
            let t = if with_len {
                "{prefix:>9} [{bar:20}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>3} left"
            } else {
                "{prefix:>9} {spinner} {bytes:>10} {binary_bytes_per_sec:>12} {elapsed:>3} elapsed"
            };
            ProgressStyle::with_template(t)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let mut bars = Vec::with_capacity(n + 2);
        let total = multi.add(ProgressBar::new(total_len.unwrap_or(0)));
        total.set_style(style(total_len.is_some()));
        total.set_prefix(what.to_owned());
        bars.push(total);
        if n > 1 {
            for (i, len) in known.iter().enumerate() {
                let bar = multi.add(ProgressBar::new(len.unwrap_or(0)));
                bar.set_style(style(len.is_some()));
                bar.set_prefix(format!("device {i}"));
                bars.push(bar);
            }
        }
        let stored_line = show_stored.then(|| {
            let line = multi.add(ProgressBar::new(0));
            line.set_style(
                ProgressStyle::with_template("{prefix:>9} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            line.set_prefix("stored");
            line
        });
        let counters = Arc::clone(counters);
        let task_bars = bars.clone();
        let stored_bar = stored_line.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(120));
            let mut lens = known;
            loop {
                tick.tick().await;
                let mut sum_len = 0;
                let mut sum_pos = 0;
                for (i, len) in lens.iter_mut().enumerate() {
                    let pos = counters.get(i as u32);
                    if let Some(l) = len {
                        *l = (*l).max(pos);
                        sum_len += *l;
                        if let Some(bar) = task_bars.get(i + 1) {
                            bar.set_length(*l);
                        }
                    }
                    sum_pos += pos;
                    if let Some(bar) = task_bars.get(i + 1) {
                        bar.set_position(pos);
                    }
                }
                if total_len.is_some() {
                    task_bars[0].set_length(sum_len);
                }
                task_bars[0].set_position(sum_pos);
                if let Some(line) = &stored_bar {
                    let stored = counters.stored();
                    let ratio = if stored > 0 {
                        sum_pos as f64 / stored as f64
                    } else {
                        1.0
                    };
                    line.set_message(format!(
                        "{} (ratio {ratio:.2})",
                        indicatif::BinaryBytes(stored)
                    ));
                }
            }
        });
        bars.extend(stored_line);
        Self {
            multi,
            task: Some(task),
            bars,
        }
    }

    /// Stops drawing and clears the bars.
    pub(crate) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for b in &self.bars {
            b.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
