//! A stripe written as segment objects ([`SegmentOutput`]): parts of a fixed size uploaded
//! while the next fills, and at each [`sync`](StripeOutput::sync) the segment completed (or
//! PUT whole when it is shorter than a part) and registered for the next manifest.

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::Arc,
};

use bytes::{Bytes, BytesMut};
use object_store::{
    MultipartId, ObjectStoreExt, PutPayload, multipart::PartId, path::Path as ObjPath,
};
use tokio::task::JoinHandle;
use vdi_agent::manifest::{Segment, segment_name};

use super::{BucketStore, Io, MAX_PARTS, describe};
use crate::output::StripeOutput;

/// A multipart upload of the current segment.
struct Upload {
    path: ObjPath,
    object: String,
    id: MultipartId,
    /// The parts that returned 200, in order.
    done: Vec<PartId>,
    /// The parts in flight, in order, each with its bytes (to be used again once sent).
    in_flight: VecDeque<(JoinHandle<object_store::Result<PartId>>, Bytes)>,
}

impl Upload {
    /// Sends `data` as the next part, on the runtime.
    fn spawn_part(&mut self, io: &Io, data: Bytes) {
        let index = self.done.len() + self.in_flight.len();
        let (multipart, path, id) = (
            Arc::clone(&io.multipart),
            self.path.clone(),
            self.id.clone(),
        );
        let payload = PutPayload::from(data.clone());
        let task = io
            .runtime
            .spawn(async move { multipart.put_part(&path, &id, index, payload).await });
        self.in_flight.push_back((task, data));
    }

    /// Waits for the oldest part in flight; its buffer goes to `spare` when nothing else
    /// holds it any more.
    fn wait_one(&mut self, io: &Io, spare: &mut Vec<BytesMut>) -> io::Result<()> {
        let Some((task, data)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let why = match io.block(task) {
            Ok(Ok(part)) => {
                self.done.push(part);
                recycle(data, spare);
                return Ok(());
            }
            Ok(Err(e)) => describe(&e),
            Err(e) => format!("the upload task failed: {e}"),
        };
        Err(io::Error::other(format!(
            "uploading part {} of {}: {why}",
            self.done.len() + 1,
            self.object
        )))
    }

    /// Waits for every part in flight.
    fn wait_all(&mut self, io: &Io, spare: &mut Vec<BytesMut>) -> io::Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_one(io, spare)?;
        }
        Ok(())
    }
}

/// Keeps a sent part's buffer for the next part, if the request let go of it: a stripe then
/// allocates its few part buffers once, instead of one per part (which the allocator keeps
/// resident long after they are freed).
fn recycle(data: Bytes, spare: &mut Vec<BytesMut>) {
    if let Ok(mut buf) = data.try_into_mut() {
        buf.clear();
        spare.push(buf);
    }
}

/// One stripe's output: see the module docs.
pub(super) struct SegmentOutput {
    store: BucketStore,
    stripe: u32,
    file: String,
    /// The backup's id, part of every segment's name.
    backup_id: u128,
    /// The current segment's number, from 1.
    segment: u32,
    /// Its bytes so far, sent and buffered.
    segment_bytes: u64,
    /// The part being filled.
    buf: BytesMut,
    /// Buffers of parts sent, to fill again.
    spare: Vec<BytesMut>,
    upload: Option<Upload>,
    /// The first failure: every later call returns it.
    failed: Option<(io::ErrorKind, String)>,
}

impl std::fmt::Debug for SegmentOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentOutput")
            .field("file", &self.file)
            .field("segment", &self.segment)
            .field("segment_bytes", &self.segment_bytes)
            .finish_non_exhaustive()
    }
}

impl SegmentOutput {
    pub(super) fn new(store: BucketStore, stripe: u32, file: String, backup_id: u128) -> Self {
        Self {
            store,
            stripe,
            file,
            backup_id,
            segment: 1,
            segment_bytes: 0,
            buf: BytesMut::new(),
            spare: Vec::new(),
            upload: None,
            failed: None,
        }
    }

    fn part_len(&self) -> usize {
        usize::try_from(self.store.plan.part).unwrap_or(usize::MAX)
    }

    fn object(&self) -> String {
        segment_name(&self.file, self.backup_id, self.segment)
    }

    fn error(&self, what: &str, e: &object_store::Error) -> io::Error {
        io::Error::other(format!(
            "{what} {} at {}: {}",
            self.object(),
            self.store.url,
            describe(e)
        ))
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    /// Runs `f`, remembering its failure for every later call.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        self.check()?;
        let r = f(self);
        if let Err(e) = &r {
            self.failed = Some((e.kind(), e.to_string()));
        }
        r
    }

    /// Sends the filled part, starting the segment's upload first if it is the first part.
    fn send_part(&mut self) -> io::Result<()> {
        let io = self.store.io.clone();
        let mut up = match self.upload.take() {
            Some(up) => up,
            None => {
                let object = self.object();
                let path = self.store.path(&object);
                let id = io
                    .block(io.multipart.create_multipart(&path))
                    .map_err(|e| self.error("starting the upload of", &e))?;
                let up = Upload {
                    path,
                    object,
                    id,
                    done: Vec::new(),
                    in_flight: VecDeque::new(),
                };
                // Named in the manifest before a part is sent, for `cleanup` after a crash.
                if let Err(e) = self.store.note_upload(&up.object, Some(&up.id)) {
                    // Kept, so that dropping the output aborts it.
                    self.upload = Some(up);
                    return Err(e);
                }
                up
            }
        };
        let next = self.spare.pop().unwrap_or_default();
        let data = std::mem::replace(&mut self.buf, next).freeze();
        up.spawn_part(&io, data);
        let limit = usize::try_from(self.store.plan.in_flight).unwrap_or(1);
        let mut r = Ok(());
        while r.is_ok() && up.in_flight.len() > limit {
            r = up.wait_one(&io, &mut self.spare);
        }
        let full = up.done.len() + up.in_flight.len() >= MAX_PARTS;
        self.upload = Some(up);
        r?;
        if full {
            // The provider's part-count limit: this segment ends here, the next goes on.
            self.end_segment()?;
        }
        Ok(())
    }

    /// Ends the current segment durably: the last part sent and every part and the
    /// completion answered 200, or the whole segment PUT; then registers it.
    fn end_segment(&mut self) -> io::Result<()> {
        let io = self.store.io.clone();
        let object = self.object();
        if let Some(mut up) = self.upload.take() {
            if !self.buf.is_empty() {
                let next = self.spare.pop().unwrap_or_default();
                up.spawn_part(&io, std::mem::replace(&mut self.buf, next).freeze());
            }
            let r = up.wait_all(&io, &mut self.spare).and_then(|()| {
                let parts = std::mem::take(&mut up.done);
                io.block(io.multipart.complete_multipart(&up.path, &up.id, parts))
                    .map(drop)
                    .map_err(|e| self.error("completing the upload of", &e))
            });
            if let Err(e) = r {
                // Kept, so that dropping the output aborts it.
                self.upload = Some(up);
                return Err(e);
            }
            self.store.note_upload(&object, None)?;
        } else if !self.buf.is_empty() {
            let next = self.spare.pop().unwrap_or_default();
            let data = std::mem::replace(&mut self.buf, next).freeze();
            io.block(
                io.objects
                    .put(&self.store.path(&object), PutPayload::from(data.clone())),
            )
            .map_err(|e| self.error("storing", &e))?;
            recycle(data, &mut self.spare);
        } else {
            return Ok(());
        }
        self.store.note_segment(
            self.stripe,
            Segment {
                name: object,
                bytes: self.segment_bytes,
            },
        );
        self.segment += 1;
        self.segment_bytes = 0;
        Ok(())
    }
}

impl Write for SegmentOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.guard(|me| {
            let part = me.part_len();
            if me.buf.capacity() < part {
                me.buf.reserve(part - me.buf.len());
            }
            let n = data.len().min(part - me.buf.len());
            me.buf.extend_from_slice(&data[..n]);
            me.segment_bytes += n as u64;
            if me.buf.len() == part {
                me.send_part()?;
            }
            Ok(n)
        })
    }

    /// Nothing: bytes are durable only at [`sync`](StripeOutput::sync).
    fn flush(&mut self) -> io::Result<()> {
        self.check()
    }
}

impl StripeOutput for SegmentOutput {
    fn sync(&mut self) -> io::Result<()> {
        self.guard(Self::end_segment)
    }
}

impl Drop for SegmentOutput {
    /// An upload still open is one that failed or was never ended: abort it, so that no part
    /// is left stored and billed, and forget it once aborted.
    fn drop(&mut self) {
        let Some(up) = self.upload.take() else {
            return;
        };
        for (task, _) in &up.in_flight {
            task.abort();
        }
        let io = &self.store.io;
        if io
            .block(io.multipart.abort_multipart(&up.path, &up.id))
            .is_ok()
        {
            // Best effort: the manifest that names it is rewritten at the end of the backup.
            let _ = self.store.note_upload(&up.object, None);
        }
    }
}
