//! A backup under a prefix of an object store ([`BucketStore`]): S3 (`s3://bucket/prefix`) or
//! Azure Blob Storage (`az://container/prefix`), through the `object_store` crate.
//!
//! The layout is the directory's, with one difference: a stripe is a chain of segment objects
//! (`stripe-00.vdis.000001`, ...), because an object cannot be appended to or synced. A
//! segment ends at each [`sync`](StripeOutput::sync) (a Flush or Complete) and before the
//! provider's part-count limit; it is one PUT when short, else a multipart upload of fixed-size
//! parts ([`segment`]). The bytes of the chain are the stripe format, unchanged.
//!
//! Durability is acknowledged only when it is real: [`sync`](StripeOutput::sync) returns after
//! every part returned 200 and the segment's completion did, and the manifest that lists the
//! segment is then stored with a conditional PUT before the Flush is acknowledged. The first
//! manifest is created only if absent (proving the bucket, the credentials and that the backup
//! is new before any BACKUP starts); every later one only if the stored one is still the
//! version this agent wrote, so two agents cannot share a prefix. Open multipart uploads are
//! recorded in the manifest as soon as they start, so that `vdi-agent cleanup` can abort them
//! after a crash (a bucket lifecycle rule that aborts incomplete multipart uploads is the
//! backstop for the one started in the instant before a crash).
//!
//! Memory is bounded by [`Plan`]: every stripe fills one part and has at most a few in
//! flight, and the plan fits them all in `--upload-memory`, whatever the device count.
//!
//! The store's methods are synchronous, like the directory's: they are called from the
//! stripes' writer and reader threads and, briefly, from the agent's tasks; [`Io::block`]
//! runs the requests on the agent's runtime either way.

mod read;
mod segment;

use std::{
    collections::BTreeMap,
    fmt, io,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
    aws::{AmazonS3Builder, Checksum},
    azure::MicrosoftAzureBuilder,
    multipart::MultipartStore,
    path::Path as ObjPath,
};
use tokio::runtime::Handle;
use vdi_agent::manifest::{
    MANIFEST_FILE, MAX_MANIFEST_LEN, Manifest, ManifestError, OpenUpload, STRIPE_EXTENSION,
    Segment, StripeEntry, is_segment_of,
};

use self::{read::SegmentReader, segment::SegmentOutput};
use super::{BackupStore, StripeInput};
use crate::{
    cli::{ObjectArgs, TransferChecksum},
    failure::{Exit, Failure, Outcome},
    output::StripeOutput,
    units::bytes,
};

/// The smallest part S3 accepts (every part of an upload but the last).
const MIN_PART: u64 = 5 << 20;
/// The most parts in one upload (S3's limit; Azure's is 50,000 blocks): a segment rolls over
/// to the next before it.
const MAX_PARTS: usize = 10_000;
/// The most parts one stripe keeps in flight.
const MAX_IN_FLIGHT: u64 = 4;

/// Which service a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provider {
    S3,
    Azure,
}

/// A parsed `s3://bucket/prefix` or `az://container/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjectUrl {
    provider: Provider,
    bucket: String,
    /// The prefix without leading or trailing `/` (may be empty).
    prefix: String,
}

impl ObjectUrl {
    /// Parses `s` when it has an object store's scheme: `None` for anything else (a path).
    ///
    /// # Errors
    ///
    /// A usage error for a URL of such a scheme that is malformed.
    pub(crate) fn parse(s: &str) -> Outcome<Option<Self>> {
        let (provider, rest) = if let Some(r) = s.strip_prefix("s3://") {
            (Provider::S3, r)
        } else if let Some(r) = s
            .strip_prefix("az://")
            .or_else(|| s.strip_prefix("azure://"))
        {
            (Provider::Azure, r)
        } else {
            return Ok(None);
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let what = if provider == Provider::S3 {
            "bucket"
        } else {
            "container"
        };
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(Failure::usage(format!(
                "{s}: the {what} name must be lowercase letters, digits, '-', '.' and '_'"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if ObjPath::parse(prefix).is_err() || prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(Failure::usage(format!(
                "{s}: the prefix {prefix:?} is not a plain object path"
            )));
        }
        Ok(Some(Self {
            provider,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }))
    }

    fn scheme(&self) -> &'static str {
        match self.provider {
            Provider::S3 => "s3",
            Provider::Azure => "az",
        }
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// The part of `--upload-memory` that parts may take: three quarters; the rest is left for
/// everything else the agent holds (the engine's buffers mapped in, the runtime, the HTTP
/// client's buffers, the allocator's slack). That rest is not bounded by the plan: measured
/// (BENCHMARKS.md), 4 devices at the default 256 MiB peaked at 286 MiB, 64 devices at 1 GiB at
/// 895 MiB.
fn parts_share(memory: u64) -> u64 {
    memory / 4 * 3
}

/// [`parts_share`] in words.
const PARTS_SHARE_TEXT: &str = "three quarters for parts";

/// The `--upload-memory` whose share for parts is at least `parts`.
fn whole_for(parts: u64) -> u64 {
    parts.div_ceil(3) * 4
}

/// How parts are sized and how many are in flight: every stripe fills one part and sends at
/// most `in_flight`, and `devices * (1 + in_flight) * part` fits in [`parts_share`] of
/// `--upload-memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) part: u64,
    pub(crate) in_flight: u64,
}

impl Plan {
    /// The plan for `devices` stripes within `memory` bytes, with parts of at most `part`.
    ///
    /// # Errors
    ///
    /// A usage error when `memory` cannot hold two parts of the smallest size per device.
    pub(crate) fn new(devices: u32, part: u64, memory: u64) -> Outcome<Self> {
        if part < MIN_PART {
            return Err(Failure::usage(format!(
                "--part-size {} is below S3's smallest part, {}",
                bytes(part),
                bytes(MIN_PART)
            )));
        }
        let devices = u64::from(devices.max(1));
        let per_device = parts_share(memory) / devices;
        if per_device < 2 * MIN_PART {
            return Err(Failure::usage(format!(
                "--upload-memory {} cannot hold {devices} stripes of two {} parts each (one \
                 being filled, one in flight) in its {}: give at least {}",
                bytes(memory),
                bytes(MIN_PART),
                PARTS_SHARE_TEXT,
                bytes(whole_for(devices * 2 * MIN_PART))
            )));
        }
        // The configured part if two fit, else the largest whole MiB that does.
        let part = part.min((per_device / 2) & !((1 << 20) - 1)).max(MIN_PART);
        let in_flight = (per_device / part - 1).clamp(1, MAX_IN_FLIGHT);
        Ok(Self { part, in_flight })
    }

    /// The plan for reading `devices` stripes back within `memory`: a stripe's reader holds
    /// `in_flight` ranged reads, one read waiting for its thread and the one being read
    /// ([`read::SegmentReader`]). Ranged reads have no smallest size, so a read is made as
    /// small as 256 KiB to fit.
    ///
    /// # Errors
    ///
    /// A usage error when `memory` cannot hold three reads of 256 KiB per stripe.
    pub(crate) fn for_reading(devices: u32, part: u64, memory: u64) -> Outcome<Self> {
        const MIN_READ: u64 = 256 << 10;
        let devices = u64::from(devices.max(1));
        let per_device = parts_share(memory) / devices;
        if per_device < 3 * MIN_READ {
            return Err(Failure::usage(format!(
                "--upload-memory {} cannot hold {devices} stripes of three {} reads each in its \
                 {}: give at least {}",
                bytes(memory),
                bytes(MIN_READ),
                PARTS_SHARE_TEXT,
                bytes(whole_for(devices * 3 * MIN_READ))
            )));
        }
        let part = part.min((per_device / 3) & !(MIN_READ - 1)).max(MIN_READ);
        let in_flight = (per_device / part - 2).clamp(1, MAX_IN_FLIGHT);
        Ok(Self { part, in_flight })
    }

    /// The most bytes of parts all `devices` stripes hold at once.
    pub(crate) fn peak(&self, devices: u32) -> u64 {
        u64::from(devices) * (1 + self.in_flight) * self.part
    }
}

/// The store and the runtime its requests run on.
#[derive(Clone)]
pub(crate) struct Io {
    objects: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    runtime: Handle,
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io")
            .field("objects", &self.objects.to_string())
            .finish_non_exhaustive()
    }
}

impl Io {
    /// Runs `f` to completion on the runtime, from a task (leaving its worker to the others
    /// meanwhile) or from a thread of the agent's own.
    fn block<F: Future>(&self, f: F) -> F::Output {
        match Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.runtime.block_on(f)),
            Err(_) => self.runtime.block_on(f),
        }
    }
}

/// What the store has written and not yet named in a stored manifest, and the last manifest
/// it stored.
#[derive(Debug, Default)]
struct Registry {
    /// The completed segments of each stripe, in order.
    segments: BTreeMap<u32, Vec<Segment>>,
    /// Open multipart uploads: object name to upload id.
    uploads: BTreeMap<String, String>,
    /// The manifest last stored, as stored, and its version.
    last: Option<(Manifest, UpdateVersion)>,
    /// Another writer replaced the manifest: nothing this store writes is named by it.
    lost: bool,
}

/// A backup under a prefix of an object store. Clones share the connection and the registry
/// (each stripe's output holds one).
#[derive(Clone, Debug)]
pub(crate) struct BucketStore {
    url: ObjectUrl,
    io: Io,
    plan: Plan,
    /// `--part-size` and `--upload-memory`, for [`replan`](Self::replan).
    part_size: u64,
    memory: u64,
    /// The stripes the plan is for.
    devices: u32,
    registry: Arc<Mutex<Registry>>,
}

impl BucketStore {
    /// Connects to the store `url` names with `args` (nothing is sent yet).
    ///
    /// # Errors
    ///
    /// A usage error for settings object_store refuses (a bad endpoint, missing credentials).
    pub(crate) fn connect(url: &ObjectUrl, args: &ObjectArgs, devices: u32) -> Outcome<Self> {
        let plan = Plan::new(devices, args.part_size, args.upload_memory)?;
        let retry = object_store::RetryConfig {
            max_retries: args.retries,
            retry_timeout: args.retry_timeout.or_no_limit(),
            ..Default::default()
        };
        let client = object_store::ClientOptions::new()
            .with_allow_http(args.allow_http)
            .with_timeout(args.request_timeout.or_no_limit())
            .with_connect_timeout(Duration::from_secs(10));
        let settings = |e: object_store::Error| {
            Failure::usage(format!("cannot use {url}: {}", clean(&e.to_string())))
        };
        let (objects, multipart): (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) =
            match url.provider {
                Provider::S3 => {
                    let mut b = AmazonS3Builder::from_env()
                        .with_bucket_name(&url.bucket)
                        .with_retry(retry)
                        .with_client_options(client);
                    if let Some(e) = &args.endpoint {
                        b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                    }
                    if args.allow_http {
                        b = b.with_allow_http(true);
                    }
                    if args.checksum == TransferChecksum::Sha256 {
                        b = b.with_checksum_algorithm(Checksum::SHA256);
                    }
                    let s3 = Arc::new(b.build().map_err(settings)?);
                    (s3.clone(), s3)
                }
                Provider::Azure => {
                    let mut b = MicrosoftAzureBuilder::from_env()
                        .with_container_name(&url.bucket)
                        .with_retry(retry)
                        .with_client_options(client);
                    if let Some(e) = &args.endpoint {
                        b = b.with_endpoint(e.clone());
                    }
                    if args.allow_http {
                        b = b.with_allow_http(true);
                    }
                    let az = Arc::new(b.build().map_err(settings)?);
                    (az.clone(), az)
                }
            };
        Ok(Self {
            url: url.clone(),
            io: Io {
                objects,
                multipart,
                runtime: Handle::current(),
            },
            plan,
            part_size: args.part_size,
            memory: args.upload_memory,
            devices,
            registry: Arc::default(),
        })
    }

    /// Plans for reading back `devices` stripes (the manifest's count).
    ///
    /// # Errors
    ///
    /// As [`Plan::for_reading`].
    pub(crate) fn replan(&mut self, devices: u32) -> Outcome {
        self.plan = Plan::for_reading(devices, self.part_size, self.memory)?;
        self.devices = devices;
        Ok(())
    }

    /// Prepares the prefix for a new backup: it must hold nothing, or (with `force`) an
    /// incomplete backup of this agent, which is removed. The first manifest, stored next,
    /// proves the rest ([`BackupStore::store_manifest`] creates it only if absent).
    ///
    /// # Errors
    ///
    /// As [`super::check_replace`]; a failure to reach the store (exit 6).
    pub(crate) fn prepare(self, force: bool) -> Outcome<Self> {
        let names = self.list()?;
        if names.is_empty() {
            self.say_plan();
            return Ok(self);
        }
        let manifest = self.manifest();
        let (state, remove) =
            super::check_replace(&self.location(), "prefix", &names, manifest, force, owns)?;
        self.remove(&remove)?;
        self.say_plan();
        eprintln!(
            "vdi-agent: removed the {state} backup at {} (--force)",
            self.location()
        );
        Ok(self)
    }

    /// Tells the user how much memory the stripes' parts take at most.
    fn say_plan(&self) {
        eprintln!(
            "vdi-agent: {}: parts of {}, {} in flight per stripe: at most {} of parts in memory \
             for {} stripe{} (--upload-memory {})",
            self.location(),
            bytes(self.plan.part),
            self.plan.in_flight,
            bytes(self.plan.peak(self.devices)),
            self.devices,
            super::plural(self.devices.into()),
            bytes(self.memory)
        );
    }

    fn path(&self, name: &str) -> ObjPath {
        if self.url.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.url.prefix))
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// The names directly under the prefix, sorted (a "directory" below it is `name/`).
    fn list(&self) -> Outcome<Vec<String>> {
        let listed = self.listing()?;
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .chain(
                listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(|n| format!("{n}/"))),
            )
            .collect();
        names.sort();
        Ok(names)
    }

    /// The stored size of every object directly under the prefix.
    fn sizes(&self) -> Outcome<BTreeMap<String, u64>> {
        Ok(self
            .listing()?
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(|n| (n.to_owned(), o.size)))
            .collect())
    }

    /// One listing of what is directly under the prefix.
    fn listing(&self) -> Outcome<object_store::ListResult> {
        let prefix = (!self.url.prefix.is_empty()).then(|| ObjPath::from(self.url.prefix.as_str()));
        self.io
            .block(self.io.objects.list_with_delimiter(prefix.as_ref()))
            .map_err(|e| self.failure("listing", &e))
    }

    /// Deletes `names` (the manifest last); a missing one is not an error.
    fn remove(&self, names: &[String]) -> Outcome {
        let (manifest, others): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|n| n.as_str() == MANIFEST_FILE);
        for name in others.into_iter().chain(manifest) {
            match self.io.block(self.io.objects.delete(&self.path(name))) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failure(&format!("deleting {name}"), &e)),
            }
        }
        Ok(())
    }

    /// `e` as a failure of `what`: a missing bucket or refused credentials say so.
    fn failure(&self, what: &str, e: &object_store::Error) -> Failure {
        Failure::new(
            Exit::Io,
            format!("{what} at {}: {}", self.location(), describe(e)),
        )
    }

    /// Aborts every open upload the registry holds; returns what could not be aborted.
    fn abort_uploads(&self) -> Vec<String> {
        let uploads: Vec<(String, String)> = {
            let r = self.lock();
            r.uploads
                .iter()
                .map(|(o, i)| (o.clone(), i.clone()))
                .collect()
        };
        let mut left = Vec::new();
        for (object, id) in uploads {
            match self
                .io
                .block(self.io.multipart.abort_multipart(&self.path(&object), &id))
            {
                Ok(()) => {
                    self.lock().uploads.remove(&object);
                }
                Err(e) => left.push(format!("{object} ({})", describe(&e))),
            }
        }
        left
    }

    /// `vdi-agent cleanup`: aborts the open uploads the manifest records, deletes the segment
    /// objects it does not name (written after its last checkpoint), and stores the manifest
    /// without the uploads. Returns what it did, for the user.
    ///
    /// # Errors
    ///
    /// A data error for a missing or damaged manifest; a failure to reach the store.
    pub(crate) fn cleanup(&self) -> Outcome<String> {
        let mut m = self.load_manifest()?;
        let version = self.manifest_version()?;
        {
            let mut r = self.lock();
            for u in &m.uploads {
                r.uploads.insert(u.object.clone(), u.id.clone());
            }
        }
        let recorded = m.uploads.len();
        let left = self.abort_uploads();
        let named: Vec<&str> = m
            .stripes
            .iter()
            .flat_map(|s| s.segments.iter().map(|g| g.name.as_str()))
            .collect();
        let extra: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|n| owns(&m, n) && n != MANIFEST_FILE && !named.contains(&n.as_str()))
            .collect();
        self.remove(&extra)?;
        if recorded > 0 && left.is_empty() {
            m.uploads.clear();
            let json = m
                .to_json()
                .map_err(|e| Failure::other(format!("the manifest: {e}")))?;
            self.put_manifest(&json, PutMode::Update(version))
                .map_err(|e| {
                    Failure::io(format!("writing the manifest of {}", self.location()), &e)
                })?;
        }
        let mut said = format!(
            "{}: aborted {} open upload{}, deleted {} segment{} its manifest does not name",
            self.location(),
            recorded - left.len(),
            super::plural(recorded as u64 - left.len() as u64),
            extra.len(),
            super::plural(extra.len() as u64),
        );
        if !left.is_empty() {
            said.push_str(&format!(
                "; could not abort {} (run cleanup again)",
                left.join(", ")
            ));
            return Err(Failure::new(Exit::Io, said));
        }
        said.push_str(&format!("; the backup is {}", m.state));
        Ok(said)
    }

    /// Stores `manifest` with the registry's segments and open uploads: created if absent the
    /// first time, after that only over the version this store wrote last.
    fn store_locked(&self, r: &mut Registry, manifest: &Manifest) -> io::Result<()> {
        if r.lost {
            self.drop_segments(r);
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{}/{MANIFEST_FILE} is another backup's now (two agents are writing to one \
                     prefix)",
                    self.location()
                ),
            ));
        }
        let mut m = manifest.clone();
        for s in &mut m.stripes {
            if let Some(segs) = r.segments.get(&s.index) {
                s.segments.clone_from(segs);
            }
        }
        m.uploads = r
            .uploads
            .iter()
            .map(|(object, id)| OpenUpload {
                object: object.clone(),
                id: id.clone(),
            })
            .collect();
        let json = m.to_json()?;
        let mode = match &r.last {
            None => PutMode::Create,
            Some((_, v)) => PutMode::Update(v.clone()),
        };
        let version = match self.put_manifest(&json, mode) {
            Ok(v) => v,
            Err(e) => {
                if e.kind() == io::ErrorKind::AlreadyExists && r.last.is_some() {
                    // Another agent's backup now: its manifest names none of this one's
                    // segments (their names carry this backup's id), which are removed.
                    r.lost = true;
                    self.drop_segments(r);
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("storing {}/{MANIFEST_FILE}: {e}", self.location()),
                ));
            }
        };
        r.last = Some((m, version));
        Ok(())
    }

    /// Best effort: deletes the segments the registry holds (after the manifest was lost to
    /// another writer, nothing names them).
    fn drop_segments(&self, r: &mut Registry) {
        let names: Vec<String> = std::mem::take(&mut r.segments)
            .into_values()
            .flatten()
            .map(|s| s.name)
            .collect();
        if let Err(f) = self.remove(&names) {
            tracing::warn!("{f}");
        }
    }

    /// Records that `object`'s upload `id` is open (or, with `None`, that it no longer is).
    /// An upload that opens is named in the manifest at once (the last one stored, stored
    /// again), so that a crash leaves it for `cleanup`; one that closes drops out of the next.
    fn note_upload(&self, object: &str, id: Option<&String>) -> io::Result<()> {
        let mut r = self.lock();
        let Some(id) = id else {
            r.uploads.remove(object);
            return Ok(());
        };
        if self.url.provider == Provider::Azure {
            // Azure has no upload to abort: blocks never committed are deleted by the service
            // (after a week), and the id object_store gives is empty.
            return Ok(());
        }
        r.uploads.insert(object.to_owned(), id.clone());
        match r.last.as_ref().map(|(m, _)| m.clone()) {
            Some(m) => self.store_locked(&mut r, &m),
            None => Ok(()),
        }
    }

    /// Records a segment of `stripe` that is complete, for the next manifest.
    fn note_segment(&self, stripe: u32, segment: Segment) {
        self.lock()
            .segments
            .entry(stripe)
            .or_default()
            .push(segment);
    }

    /// The stored manifest's version, for a conditional update.
    fn manifest_version(&self) -> Outcome<UpdateVersion> {
        let meta = self
            .io
            .block(self.io.objects.head(&self.path(MANIFEST_FILE)))
            .map_err(|e| self.failure("reading the manifest", &e))?;
        Ok(UpdateVersion {
            e_tag: meta.e_tag,
            version: meta.version,
        })
    }

    /// PUTs the manifest with `mode`; when the store says the condition failed, reads what is
    /// there: the same bytes mean an earlier attempt of this PUT landed (a retried request
    /// whose answer was lost), anything else that another writer got there.
    fn put_manifest(&self, json: &[u8], mode: PutMode) -> io::Result<UpdateVersion> {
        let path = self.path(MANIFEST_FILE);
        let payload = PutPayload::from(json.to_vec());
        let put = self.io.block(self.io.objects.put_opts(
            &path,
            payload,
            PutOptions {
                mode: mode.clone(),
                ..Default::default()
            },
        ));
        match put {
            Ok(r) => Ok(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            }),
            Err(
                e @ (object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }),
            ) => {
                let stored = self
                    .io
                    .block(async {
                        let got = self.io.objects.get(&path).await?;
                        let meta = got.meta.clone();
                        got.bytes().await.map(|b| (b, meta))
                    })
                    .ok();
                if let Some((b, meta)) = stored
                    && b.as_ref() == json
                {
                    return Ok(UpdateVersion {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    });
                }
                let why = if matches!(mode, PutMode::Create) {
                    "a backup already exists there (its manifest.json appeared before this one \
                     was created): choose another prefix"
                } else {
                    "another writer changed manifest.json since this agent stored it: two agents \
                     are writing to one prefix"
                };
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{why} ({})", describe(&e)),
                ))
            }
            Err(e) => Err(io::Error::other(describe(&e))),
        }
    }
}

impl BackupStore for BucketStore {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn free_space(&self) -> io::Result<u64> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an object store has no free space to ask",
        ))
    }

    fn create_stripe(&self, file: &str) -> Outcome<(Box<dyn StripeOutput>, String)> {
        let index = {
            // The stripe's index, from its usual name; the registry keys segments by it.
            let n = file
                .strip_prefix("stripe-")
                .and_then(|r| r.strip_suffix(&format!(".{STRIPE_EXTENSION}")))
                .and_then(|n| n.parse::<u32>().ok());
            n.ok_or_else(|| Failure::other(format!("{file} is not a stripe name")))?
        };
        let Some(backup_id) = self.lock().last.as_ref().map(|(m, _)| m.backup_id) else {
            return Err(Failure::other(
                "a stripe was created before the backup's manifest was stored",
            ));
        };
        let label = format!("{}/{file}", self.location());
        let out = SegmentOutput::new(self.clone(), index, file.to_owned(), backup_id);
        Ok((Box::new(out), label))
    }

    fn store_manifest(&self, manifest: &Manifest) -> io::Result<()> {
        let mut r = self.lock();
        self.store_locked(&mut r, manifest)
    }

    fn discard(&self, manifest: Option<&Manifest>) -> String {
        let left = self.abort_uploads();
        let stored = self.lock().last.is_some();
        let mut names: Vec<String> = {
            let r = self.lock();
            r.segments
                .values()
                .flatten()
                .map(|s| s.name.clone())
                .collect()
        };
        if let Some(m) = manifest {
            names.extend(
                m.stripes
                    .iter()
                    .flat_map(|s| s.segments.iter().map(|g| g.name.clone())),
            );
        }
        if stored {
            names.push(MANIFEST_FILE.to_owned());
        }
        let mut said = match self.remove(&names) {
            Ok(()) if names.is_empty() => format!("{} was left as it was", self.location()),
            Ok(()) => format!("removed what it wrote at {}", self.location()),
            Err(f) => format!("what it wrote stays at {}: {f}", self.location()),
        };
        if !left.is_empty() {
            said.push_str(&format!(
                "; uploads left open: {} (vdi-agent cleanup cannot see them without a manifest; \
                 a lifecycle rule that aborts incomplete multipart uploads removes them)",
                left.join(", ")
            ));
        }
        said
    }

    fn manifest(&self) -> Result<Manifest, ManifestError> {
        let path = PathBuf::from(format!("{}/{MANIFEST_FILE}", self.location()));
        let got = self.io.block(async {
            let got = self
                .io
                .objects
                .get_opts(
                    &self.path(MANIFEST_FILE),
                    object_store::GetOptions {
                        range: Some((0..MAX_MANIFEST_LEN + 1).into()),
                        ..Default::default()
                    },
                )
                .await?;
            got.bytes().await
        });
        match got {
            Ok(b) => Manifest::from_json(&b, &path),
            Err(object_store::Error::NotFound { .. }) => Err(ManifestError::Missing {
                dir: PathBuf::from(self.location()),
            }),
            Err(e) => Err(ManifestError::Io {
                path,
                error: io::Error::other(describe(&e)),
            }),
        }
    }

    /// Each stripe with at least one segment, by its file name (`stripe-04.vdis` for
    /// `stripe-04.vdis.000001`), so that strays are found as in a directory.
    fn stripe_names(&self) -> Outcome<Vec<String>> {
        let suffix = format!(".{STRIPE_EXTENSION}.");
        let mut names: Vec<String> = self
            .list()?
            .into_iter()
            .filter_map(|n| {
                let at = n.find(&suffix)?;
                let file = &n[..at + suffix.len() - 1];
                is_segment_of(&n, file).then(|| file.to_owned())
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    fn open_stripe_input(&self, entry: &StripeEntry) -> Outcome<StripeInput> {
        let label = format!(
            "stripe {} ({}/{})",
            entry.index,
            self.location(),
            entry.file
        );
        if entry.segments.is_empty() && entry.stored_bytes > 0 {
            return Err(Failure::data(format!(
                "{label}: the manifest names no segment for its {} stored bytes",
                entry.stored_bytes
            )));
        }
        let sizes = self.sizes()?;
        let mut len = 0;
        for seg in &entry.segments {
            match sizes.get(&seg.name) {
                None => {
                    return Err(Failure::data(format!(
                        "{label}: segment {} is missing: the backup is incomplete",
                        seg.name
                    )));
                }
                Some(&n) if n != seg.bytes => {
                    return Err(Failure::data(format!(
                        "{label}: segment {} holds {n} bytes, the manifest says {}: it was \
                         truncated or replaced",
                        seg.name, seg.bytes
                    )));
                }
                Some(&n) => len += n,
            }
        }
        let paths = entry
            .segments
            .iter()
            .map(|s| (self.path(&s.name), s.bytes))
            .collect();
        let input = SegmentReader::start(self.io.clone(), paths, self.plan, label.clone());
        Ok(StripeInput {
            label,
            input: Box::new(input),
            len,
        })
    }
}

/// Whether `name` under the prefix belongs to the backup of `m`: its manifest, or a segment
/// of one of its stripes (named in the manifest or written after its last checkpoint).
fn owns(m: &Manifest, name: &str) -> bool {
    name == MANIFEST_FILE || m.stripes.iter().any(|s| is_segment_of(name, &s.file))
}

fn lock(r: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // A thread that panicked while holding the lock left the registry as it was between two
    // whole updates: each update is one insert or remove.
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An object_store error in the user's words: what to check for the usual causes.
fn describe(e: &object_store::Error) -> String {
    let text = clean(&e.to_string());
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("nosuchbucket") || lower.contains("containernotfound") {
        " (the bucket or container does not exist)"
    } else if lower.contains("invalidaccesskeyid")
        || lower.contains("signaturedoesnotmatch")
        || lower.contains("authenticationfailed")
        || lower.contains("accessdenied")
        || matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        )
    {
        " (the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or \
         AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY)"
    } else if lower.contains("connect")
        || lower.contains("connection")
        || lower.contains("error sending request")
    {
        " (the server cannot be reached)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

/// `s` without anything that looks like a secret (object_store's messages may quote a
/// request's URL, whose query can carry a SAS token or a presigned signature).
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..at]);
        out.push_str("?<query hidden>");
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == ')')
            .map_or(rest.len(), |e| at + e);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print() {
        let u = ObjectUrl::parse("s3://bkt/a/b/").unwrap().unwrap();
        assert_eq!(u.to_string(), "s3://bkt/a/b");
        assert_eq!(u.prefix, "a/b");
        let u = ObjectUrl::parse("az://ctr").unwrap().unwrap();
        assert_eq!(u.to_string(), "az://ctr");
        assert!(ObjectUrl::parse("/tmp/x").unwrap().is_none());
        assert!(ObjectUrl::parse("s3://").is_err());
        assert!(ObjectUrl::parse("s3://Bad/x").is_err());
        assert!(ObjectUrl::parse("s3://b/../x").is_err());
    }

    #[test]
    fn plans_fit_the_memory() {
        let mib = 1 << 20;
        let p = Plan::new(4, 16 * mib, 256 * mib).unwrap();
        assert_eq!(
            p,
            Plan {
                part: 16 * mib,
                in_flight: 2
            }
        );
        assert!(p.peak(4) <= 192 * mib);
        let p = Plan::new(64, 16 * mib, 1024 * mib).unwrap();
        assert!(p.peak(64) <= 768 * mib, "{p:?}");
        assert!(p.part >= MIN_PART);
        let e = Plan::new(64, 16 * mib, 256 * mib).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("at least 853.33 MiB"), "{}", e.message);
        assert!(Plan::new(64, 5 * mib, whole_for(640 * mib)).is_ok());
        assert!(Plan::new(1, mib, 256 * mib).is_err());
        // Reading: three reads of at least 256 KiB per stripe, within the memory.
        let r = Plan::for_reading(64, 16 * mib, 256 * mib).unwrap();
        assert!(64 * (r.in_flight + 2) * r.part <= 192 * mib, "{r:?}");
        assert_eq!(
            Plan::for_reading(4, 16 * mib, 256 * mib).unwrap().part,
            16 * mib
        );
        assert!(Plan::for_reading(64, 16 * mib, 32 * mib).is_err());
    }

    #[test]
    fn secrets_in_urls_are_hidden() {
        assert_eq!(
            clean("GET http://h/c/b?sig=abc&se=1 failed"),
            "GET http://h/c/b?<query hidden> failed"
        );
    }
}
