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

/// Bytes moved per device; the data threads add to them.
#[derive(Debug)]
pub(crate) struct Counters {
    devices: Vec<AtomicU64>,
}

impl Counters {
    pub(crate) fn new(devices: u32) -> Arc<Self> {
        Arc::new(Self {
            devices: (0..devices).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Adds `n` bytes to device `i`.
    pub(crate) fn add(&self, i: u32, n: u64) {
        if let Some(c) = self.devices.get(i as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self, i: u32) -> u64 {
        self.devices
            .get(i as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn total(&self) -> u64 {
        self.devices.iter().map(|c| c.load(Ordering::Relaxed)).sum()
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
    /// known. Draws nothing when `enabled` is false or stderr is not a terminal.
    pub(crate) fn start(
        what: &str,
        counters: &Arc<Counters>,
        expected: Option<Vec<u64>>,
        enabled: bool,
    ) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let n = counters.devices.len();
        let known = |i: usize| expected.as_ref().and_then(|e| e.get(i).copied());
        let total_len = expected.as_ref().map(|e| e.iter().sum::<u64>());
        let style = |with_len: bool| {
            let t = if with_len {
                "{prefix:>10} [{bar:30}] {bytes:>11}/{total_bytes:<11} {binary_bytes_per_sec:>13} {eta:>4}"
            } else {
                "{prefix:>10} {spinner} {bytes:>11} {binary_bytes_per_sec:>13} {elapsed:>4}"
            };
            ProgressStyle::with_template(t)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let mut bars = Vec::with_capacity(n + 1);
        let total = multi.add(ProgressBar::new(total_len.unwrap_or(0)));
        total.set_style(style(total_len.is_some()));
        total.set_prefix(what.to_owned());
        bars.push(total);
        if n > 1 {
            for i in 0..n {
                let bar = multi.add(ProgressBar::new(known(i).unwrap_or(0)));
                bar.set_style(style(known(i).is_some()));
                bar.set_prefix(format!("device {i}"));
                bars.push(bar);
            }
        }
        let counters = Arc::clone(counters);
        let task_bars = bars.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(120));
            loop {
                tick.tick().await;
                task_bars[0].set_position(counters.total());
                for (i, bar) in task_bars.iter().skip(1).enumerate() {
                    bar.set_position(counters.get(i as u32));
                }
            }
        });
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
