//! A stripe read back from its segment objects ([`SegmentReader`]): ranged GETs of one part
//! each, a bounded number in flight, delivered in order.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use futures::{StreamExt, stream};
use object_store::{ObjectStoreExt, path::Path as ObjPath};
use tokio::sync::mpsc;

use super::{Io, Plan, describe};

/// The bytes of a chain of segments, in order, as one [`Read`].
pub(super) struct SegmentReader {
    io: Io,
    rx: mpsc::Receiver<Result<Bytes, String>>,
    /// The chunk being read.
    current: Bytes,
    label: String,
    /// The producer ended (an error was returned, or everything was read).
    done: bool,
}

impl std::fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl SegmentReader {
    /// Starts reading `segments` (each a path and its length), `plan.in_flight` ranged GETs
    /// of `plan.part` bytes at a time; at most one more chunk waits for the reader.
    pub(super) fn start(io: Io, segments: Vec<(ObjPath, u64)>, plan: Plan, label: String) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let ranges: Vec<(ObjPath, std::ops::Range<u64>)> = segments
            .into_iter()
            .flat_map(|(path, len)| {
                (0..len.div_ceil(plan.part)).map(move |i| {
                    let start = i * plan.part;
                    (path.clone(), start..(start + plan.part).min(len))
                })
            })
            .collect();
        let objects = std::sync::Arc::clone(&io.objects);
        let in_flight = usize::try_from(plan.in_flight).unwrap_or(1);
        io.runtime.spawn(async move {
            let mut chunks = stream::iter(ranges)
                .map(|(path, range)| {
                    let objects = std::sync::Arc::clone(&objects);
                    async move {
                        let want = range.end - range.start;
                        let got = objects
                            .get_range(&path, range.clone())
                            .await
                            .map_err(|e| format!("reading {path}: {}", describe(&e)))?;
                        if got.len() as u64 != want {
                            return Err(format!(
                                "reading {path}: {} bytes at {}, {want} asked for: the segment \
                                 is shorter than its manifest says",
                                got.len(),
                                range.start
                            ));
                        }
                        Ok(got)
                    }
                })
                .buffered(in_flight);
            while let Some(chunk) = chunks.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Self {
            io,
            rx,
            current: Bytes::new(),
            label,
            done: false,
        }
    }
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.io.block(self.rx.recv()) {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(io::Error::other(format!("{}: {e}", self.label)));
                }
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
