//! The lock table on disk: an index of keys (`index`: header + open-addressing hash buckets)
//! over documents in a cell heap (`cells`), plus the durable reservation of ids (`tokens`).
//! Every operation runs as a [`Txn`] under the table's kernel guard; reading a key costs a
//! handful of positioned reads whatever else the table holds, and a change writes only the
//! documents it changes (copy on write), their buckets and the header. The byte layouts are
//! in [`super::layout`] and docs/protocol.md.
//!
//! Crash safety: a change first marks the header dirty, then writes, then commits the header.
//! A process that finds the header dirty (its writer died), unreadable, or written before the
//! last reboot rebuilds the index from the documents ([`rebuild`]); the documents themselves
//! are never overwritten in place while they are current. Ids (tickets and fencing tokens)
//! come from one counter whose durable reservation is extended (and fsynced) before an id
//! beyond it is handed out; every rebuild after a crash restarts the counter above the
//! reservation, so an id is never handed out twice, whatever a power cut kept.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use maos_core::fsx::{DataFile, LockFile};
use maos_core::now_ms;

use super::layout::{
    self, BUCKET, BUCKETS_AT, Bucket, BucketRead, CELL, CLASSES, EXTENT_HEADER, ExtentHead,
    HEADER_LEN, Header, MIN_BUCKETS, TOKEN_SLOT_LEN, TOKEN_SLOTS, TokenSlot,
};
use super::records::{Doc, prefixes};
use crate::{Error, Result};

/// Name of the guard file.
pub(crate) const GUARD: &str = "guard";
/// Name of the index file.
pub(crate) const INDEX: &str = "index";
/// Name of the cell heap.
pub(crate) const CELLS: &str = "cells";
/// Name of the durable id reservation.
pub(crate) const TOKENS: &str = "tokens";
/// How many ids one reservation covers (one fsync per this many grants and waits).
pub(crate) const WINDOW: u64 = 1 << 20;
/// The largest id ever handed out.
pub(crate) const ID_LIMIT: u64 = (1 << 63) - 1;
/// Largest document: 16 MiB.
pub(crate) const DOC_LIMIT: usize = 16 << 20;
/// The most cells a table may have (4 GiB of cells; far beyond any honest table).
const CELLS_LIMIT: u64 = 1 << 23;
/// How much a scan reads at once.
const SCAN_CHUNK: u64 = 1 << 20;
/// The files of one lock table, kept open by a process.
#[derive(Debug)]
pub(crate) struct Files {
    pub(crate) dir: PathBuf,
    pub(crate) guard: LockFile,
    pub(crate) index: DataFile,
    pub(crate) cells: DataFile,
    pub(crate) tokens: DataFile,
}

impl Files {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            guard: LockFile::open(&dir.join(GUARD))?,
            index: DataFile::open_rw(&dir.join(INDEX))?,
            cells: DataFile::open_rw(&dir.join(CELLS))?,
            tokens: DataFile::open_rw(&dir.join(TOKENS))?,
        })
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX)
    }

    pub(crate) fn cells_path(&self) -> PathBuf {
        self.dir.join(CELLS)
    }

    pub(crate) fn tokens_path(&self) -> PathBuf {
        self.dir.join(TOKENS)
    }
}

/// Reads up to `buf.len()` bytes at `off`; what lies beyond the end of the file reads as
/// zeros. Returns how many bytes the file had.
pub(crate) fn read_at(f: &DataFile, buf: &mut [u8], off: u64) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.file().read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", f.path(), e)),
        }
    }
    buf[got..].fill(0);
    Ok(got)
}

fn file_len(f: &DataFile) -> Result<u64> {
    Ok(f.len()?)
}

/// A damaged table file (the error's message says how `maos doctor` helps).
fn corrupt(path: PathBuf, what: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        path,
        reason: what.to_string(),
    }
}

/// Why the index has to be rebuilt from the documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Nothing there yet.
    Fresh,
    /// The header was written before this boot: the machine restarted (perhaps a power cut
    /// that lost recent writes).
    Reboot,
    /// A writer died in the middle of the change with this generation.
    Crashed(u64),
    /// The header cannot be read (torn by a power cut, or damaged).
    Unreadable,
    /// A bucket failed its checksum, or the index is too full: the documents are intact.
    Reindex,
    /// `maos doctor --repair`: documents that fail their checksum are set aside.
    Repair,
}

impl Cause {
    /// Whether the counter must restart above the durable reservation (the header's
    /// `next_id` may be older than ids already handed out).
    fn jumps(self) -> bool {
        // A fresh index over a reservation that survived (the index was removed, or an older
        // table seeded it) starts above it too; only a clean reindex keeps the counter.
        !matches!(self, Cause::Reindex)
    }
}

/// What a rebuild found and did (for logs and `maos doctor`).
#[derive(Debug, Clone, Default)]
pub(crate) struct RebuildReport {
    /// Documents kept.
    pub(crate) docs: usize,
    /// Older copies of a document dropped (a newer one exists).
    pub(crate) superseded: usize,
    /// Extents that fail their checksum, dropped, with where their bytes were saved.
    pub(crate) dropped: Vec<(u64, Option<PathBuf>)>,
    /// The counter after the rebuild.
    pub(crate) next_id: u64,
}

/// A document as loaded in a transaction.
#[derive(Debug, Clone)]
struct Entry {
    /// Where its bucket is (`None` for the pattern document, or not looked up yet).
    slot: Option<Slot>,
    /// Its current extent (first cell, class).
    extent: Option<(u32, u8)>,
    /// Whether it was non-empty when loaded.
    had: bool,
    /// Whether it held an agent lease when loaded.
    had_lease: bool,
    doc: Doc,
    changed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The bucket's index if the key has one.
    at: Option<u64>,
    /// Its content (as it will be written).
    bucket: Bucket,
    /// Where to put it when it has none yet.
    insert_at: u64,
    /// Whether `bucket` differs from what is on disk.
    dirty: bool,
}

/// A changed document in a commit: where its new copy goes (none when it became empty) and
/// its encoded body.
struct Placement {
    key: String,
    /// First cell and class of the new copy.
    extent: Option<(u32, u8)>,
    body: Option<Vec<u8>>,
}

/// One operation on the table, under the guard.
pub(crate) struct Txn<'a> {
    pub(crate) files: &'a Files,
    pub(crate) hdr: Header,
    start: Header,
    exclusive: bool,
    entries: HashMap<String, Entry>,
    /// Bucket slots looked up for keys without a document of their own (prefixes).
    slots: HashMap<String, Slot>,
    window: HashMap<u64, [u8; BUCKET as usize]>,
    /// Extra durability requested by the operation (a lease handed over, say).
    durable: bool,
    /// Set when the operation found the index damaged: it is rebuilt and the operation retried.
    pub(crate) rebuild: Option<Cause>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("hdr", &self.hdr)
            .field("exclusive", &self.exclusive)
            .finish_non_exhaustive()
    }
}

/// What a transaction start needs to know about the header.
pub(crate) fn check_header(
    files: &Files,
    boot: &[u8; 16],
) -> Result<std::result::Result<Header, Cause>> {
    let mut b = [0u8; HEADER_LEN];
    let got = read_at(&files.index, &mut b, 0)?;
    if got == 0 {
        return Ok(Err(Cause::Fresh));
    }
    let Some(h) = Header::decode(&b) else {
        return Ok(Err(Cause::Unreadable));
    };
    if h.dirty != 0 {
        return Ok(Err(Cause::Crashed(h.dirty)));
    }
    if &h.boot != boot {
        return Ok(Err(Cause::Reboot));
    }
    if h.next_id > h.reserved.saturating_add(1) || h.generation >= 1 << 62 {
        return Ok(Err(Cause::Unreadable));
    }
    Ok(Ok(h))
}

impl<'a> Txn<'a> {
    pub(crate) fn new(files: &'a Files, hdr: Header, exclusive: bool) -> Self {
        Self {
            files,
            start: hdr.clone(),
            hdr,
            exclusive,
            entries: HashMap::new(),
            slots: HashMap::new(),
            window: HashMap::new(),
            durable: false,
            rebuild: None,
        }
    }

    pub(crate) fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Records that the index must be rebuilt (the caller retries the operation after it).
    fn needs(&mut self, cause: Cause, what: &str) -> Error {
        self.rebuild = Some(cause);
        corrupt(self.files.index_path(), what)
    }

    fn bucket_at(&mut self, i: u64) -> Result<BucketRead> {
        if let Some(b) = self.window.get(&i) {
            return Ok(Bucket::decode(b));
        }
        // Read a window of 8 buckets (one syscall for a whole probe, usually).
        let n = 8.min(self.hdr.buckets - i);
        let mut buf = vec![0u8; (n * BUCKET) as usize];
        read_at(&self.files.index, &mut buf, BUCKETS_AT + i * BUCKET)?;
        for k in 0..n {
            let mut one = [0u8; BUCKET as usize];
            one.copy_from_slice(&buf[(k * BUCKET) as usize..((k + 1) * BUCKET) as usize]);
            self.window.insert(i + k, one);
        }
        let b = self.window[&i];
        Ok(Bucket::decode(&b))
    }

    /// Gives every key that gets a bucket in this change a bucket of its own. Each was looked
    /// up alone before the change, so two new keys whose probes end at the same free bucket
    /// (a key and its parent prefix with one home bucket, as `src/f250.rs` and `src`) would
    /// both be written there and one would vanish from the index. A later one moves on along
    /// its probe to the next free bucket nobody in this change takes; every bucket it passes
    /// is in use, so lookups still reach it.
    fn spread_new_buckets(&mut self) -> Result<()> {
        let mut new: Vec<(bool, String, u64)> = Vec::new();
        for (k, e) in &self.entries {
            if let Some(s) = &e.slot
                && s.dirty
                && s.at.is_none()
                && !s.bucket.is_tombstone()
            {
                new.push((true, k.clone(), s.insert_at));
            }
        }
        for (k, s) in &self.slots {
            if s.dirty && s.at.is_none() && !s.bucket.is_tombstone() {
                new.push((false, k.clone(), s.insert_at));
            }
        }
        if new.len() < 2 {
            return Ok(());
        }
        new.sort_by(|a, b| (a.2, &a.1).cmp(&(b.2, &b.1)));
        let mask = self.hdr.buckets - 1;
        let mut taken: HashSet<u64> = HashSet::new();
        for (in_entries, k, at) in new {
            let mut i = at;
            let mut steps = 0;
            loop {
                let free = !taken.contains(&i)
                    && match self.bucket_at(i)? {
                        BucketRead::Empty => true,
                        BucketRead::Used(b) => b.is_tombstone(),
                        BucketRead::Bad => {
                            return Err(self.needs(
                                Cause::Reindex,
                                "a bucket of the index fails its checksum",
                            ));
                        }
                    };
                if free {
                    break;
                }
                steps += 1;
                if steps >= self.hdr.buckets {
                    return Err(self.needs(Cause::Reindex, "the index has no empty bucket"));
                }
                i = (i + 1) & mask;
            }
            taken.insert(i);
            let slot = if in_entries {
                self.entries.get_mut(&k).and_then(|e| e.slot.as_mut())
            } else {
                self.slots.get_mut(&k)
            };
            if let Some(slot) = slot {
                slot.insert_at = i;
            }
        }
        Ok(())
    }

    /// Finds `key`'s bucket (or where it would go).
    fn find_slot(&mut self, key: &str) -> Result<Slot> {
        let (h1, h2) = layout::key_hashes(key);
        let mask = self.hdr.buckets - 1;
        let mut i = layout::home(h1, self.hdr.buckets);
        let mut first_tomb = None;
        for _ in 0..self.hdr.buckets {
            match self.bucket_at(i)? {
                BucketRead::Bad => {
                    return Err(
                        self.needs(Cause::Reindex, "a bucket of the index fails its checksum")
                    );
                }
                BucketRead::Empty => {
                    return Ok(Slot {
                        at: None,
                        bucket: Bucket {
                            h1,
                            h2,
                            doc: 0,
                            below: 0,
                        },
                        insert_at: first_tomb.unwrap_or(i),
                        dirty: false,
                    });
                }
                BucketRead::Used(b) if b.is_tombstone() => {
                    first_tomb.get_or_insert(i);
                }
                BucketRead::Used(b) if b.h1 == h1 && b.h2 == h2 => {
                    return Ok(Slot {
                        at: Some(i),
                        bucket: b,
                        insert_at: i,
                        dirty: false,
                    });
                }
                BucketRead::Used(_) => {}
            }
            i = (i + 1) & mask;
        }
        // No empty bucket at all: the index is full of tombstones.
        Err(self.needs(Cause::Reindex, "the index has no empty bucket"))
    }

    /// Reads the document extent at `cell` (first cell + 0) that must hold `key`.
    fn read_doc(&self, cell: u32, key: &str) -> Result<(u8, Doc)> {
        let path = self.files.cells_path();
        if u64::from(cell) >= self.hdr.cells {
            return Err(corrupt(
                self.files.index_path(),
                format!(
                    "the index points {key:?} at cell {cell}, beyond the {} cells in use",
                    self.hdr.cells
                ),
            ));
        }
        let mut first = vec![0u8; CELL as usize];
        read_at(&self.files.cells, &mut first, u64::from(cell) * CELL)?;
        let (class, key_len, body_len, crc) = match layout::decode_head(&first, cell) {
            ExtentHead::Doc {
                class,
                key_len,
                body_len,
                crc,
                ..
            } => (class, key_len, body_len, crc),
            other => {
                return Err(corrupt(
                    path,
                    format!(
                        "the document of {key:?} at cell {cell} is not there ({})",
                        describe_head(&other)
                    ),
                ));
            }
        };
        let len = EXTENT_HEADER + usize::from(key_len) + body_len as usize;
        let bytes = if len <= first.len() {
            first
        } else {
            let mut all = vec![0u8; len];
            read_at(&self.files.cells, &mut all, u64::from(cell) * CELL)?;
            all
        };
        let Some((k, body)) = layout::doc_parts(&bytes, key_len, body_len, crc) else {
            return Err(corrupt(
                path,
                format!("the document of {key:?} at cell {cell} fails its checksum (damaged)"),
            ));
        };
        if k != key {
            return Err(corrupt(
                path,
                format!("the index points {key:?} at cell {cell}, which holds {k:?}"),
            ));
        }
        let doc = parse_doc(body).map_err(|e| {
            corrupt(
                path.clone(),
                format!("the document of {key:?} at cell {cell} does not parse: {e}"),
            )
        })?;
        Ok((class, doc))
    }

    fn load(&mut self, key: &str) -> Result<()> {
        if self.entries.contains_key(key) {
            return Ok(());
        }
        let entry = if key.is_empty() {
            let extent = match self.hdr.pattern_doc {
                0 => None,
                c => Some(c - 1),
            };
            let (extent, doc) = match extent {
                Some(cell) => {
                    let (class, doc) = self.read_doc(cell, key)?;
                    (Some((cell, class)), doc)
                }
                None => (None, Doc::default()),
            };
            Entry {
                slot: None,
                had: extent.is_some(),
                had_lease: doc.has_lease(),
                extent,
                doc,
                changed: false,
            }
        } else {
            let slot = match self.slots.remove(key) {
                Some(s) => s,
                None => self.find_slot(key)?,
            };
            let (extent, doc) = match slot.bucket.doc {
                0 => (None, Doc::default()),
                c if slot.at.is_some() => {
                    let (class, doc) = self.read_doc(c - 1, key)?;
                    (Some((c - 1, class)), doc)
                }
                _ => (None, Doc::default()),
            };
            Entry {
                slot: Some(slot),
                had: extent.is_some(),
                had_lease: doc.has_lease(),
                extent,
                doc,
                changed: false,
            }
        };
        self.entries.insert(key.to_owned(), entry);
        Ok(())
    }

    /// The document of `key` (`""`: the pattern document).
    pub(crate) fn doc(&mut self, key: &str) -> Result<&Doc> {
        self.load(key)?;
        Ok(&self.entries[key].doc)
    }

    /// The document of `key`, to change it (written at [`Txn::commit`]).
    pub(crate) fn doc_mut(&mut self, key: &str) -> Result<&mut Doc> {
        self.load(key)?;
        let e = self.entries.get_mut(key).expect("loaded just above");
        e.changed = true;
        Ok(&mut e.doc)
    }

    /// How many keys with a document lie strictly below `key`.
    pub(crate) fn below(&mut self, key: &str) -> Result<u32> {
        if key.is_empty() {
            return Ok(u32::try_from(self.hdr.keys).unwrap_or(u32::MAX));
        }
        if let Some(e) = self.entries.get(key) {
            return Ok(e.slot.map_or(0, |s| s.bucket.below));
        }
        if let Some(s) = self.slots.get(key) {
            return Ok(s.bucket.below);
        }
        let s = self.find_slot(key)?;
        let below = s.bucket.below;
        self.slots.insert(key.to_owned(), s);
        Ok(below)
    }

    /// The keys with a document below `prefix` (`""`: every plain key), their documents
    /// loaded. Reads the whole cell heap: used only when [`Txn::below`] says there are some.
    pub(crate) fn keys_under(&mut self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let want = format!("{prefix}/");
        self.scan(
            |key| !key.is_empty() && (prefix.is_empty() || key.starts_with(&want)),
            &mut out,
        )?;
        Ok(out)
    }

    /// Every key with a document (the pattern document's key `""` included), loaded.
    pub(crate) fn all_keys(&mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.scan(|_| true, &mut out)?;
        Ok(out)
    }

    fn scan(&mut self, mut want: impl FnMut(&str) -> bool, out: &mut Vec<String>) -> Result<()> {
        let path = self.files.cells_path();
        let mut found_plain = 0u64;
        let mut found_pattern = false;
        let mut docs: Vec<(String, u32, u8, Doc)> = Vec::new();
        scan_extents(
            &self.files.cells,
            self.hdr.cells,
            |cell, head, bytes| match head {
                ExtentHead::Doc {
                    class,
                    key_len,
                    body_len,
                    crc,
                    ..
                } => {
                    let Some((key, body)) = layout::doc_parts(bytes, *key_len, *body_len, *crc)
                    else {
                        return Err(corrupt(
                            path.clone(),
                            format!("the document at cell {cell} fails its checksum (damaged)"),
                        ));
                    };
                    if key.is_empty() {
                        found_pattern = true;
                    } else {
                        found_plain += 1;
                    }
                    if want(key) {
                        let doc = parse_doc(body).map_err(|e| {
                            corrupt(
                                path.clone(),
                                format!(
                                    "the document of {key:?} at cell {cell} does not parse: {e}"
                                ),
                            )
                        })?;
                        docs.push((key.to_owned(), cell, *class, doc));
                    }
                    Ok(())
                }
                ExtentHead::Bad { .. } => Err(corrupt(
                    path.clone(),
                    format!("the extent at cell {cell} has a damaged header"),
                )),
                _ => Ok(()),
            },
        )?;
        if found_plain != self.hdr.keys || found_pattern != (self.hdr.pattern_doc != 0) {
            return Err(corrupt(
                path,
                format!(
                    "the cells hold {found_plain} documents but the index counts {} (a document was damaged or lost)",
                    self.hdr.keys
                ),
            ));
        }
        for (key, cell, class, doc) in docs {
            if !self.entries.contains_key(&key) {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        slot: None,
                        extent: Some((cell, class)),
                        had: true,
                        had_lease: doc.has_lease(),
                        doc,
                        changed: false,
                    },
                );
            }
            out.push(key);
        }
        Ok(())
    }

    /// Hands out the next id (a ticket or a fencing token), extending the durable
    /// reservation first when the counter reaches it.
    pub(crate) fn issue_id(&mut self) -> Result<u64> {
        let id = self.hdr.next_id.max(1);
        if id > ID_LIMIT {
            return Err(Error::Exhausted {
                path: self.files.tokens_path(),
            });
        }
        if id > self.hdr.reserved {
            let durable = read_reservation(self.files)?.unwrap_or(0);
            let base = durable.max(self.hdr.reserved);
            let new = base.saturating_add(WINDOW).min(ID_LIMIT).max(id);
            write_reservation(self.files, new)?;
            self.hdr.reserved = new;
        }
        self.hdr.next_id = id + 1;
        #[cfg(test)]
        issue_hook(&self.files.dir, id);
        Ok(id)
    }

    /// Writes every changed document (copy on write), the buckets and the header. Durable
    /// (fsynced before the header commits) when a changed document holds or held a lease.
    pub(crate) fn commit(&mut self) -> Result<()> {
        let changed: Vec<String> = {
            let mut v: Vec<String> = self
                .entries
                .iter()
                .filter(|(_, e)| e.changed && !(e.doc.is_empty() && !e.had && e.extent.is_none()))
                .map(|(k, _)| k.clone())
                .collect();
            v.sort();
            v
        };
        if changed.is_empty() && self.hdr == self.start {
            return Ok(());
        }
        if !self.exclusive {
            return Err(Error::io(
                "write",
                self.files.index_path(),
                std::io::Error::other("a change under the shared guard (a bug in maos-lock)"),
            ));
        }
        let written = self.hdr.generation + 1;
        // 1. Serialise, and decide durability.
        let mut bodies: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut durable = self.durable;
        for k in &changed {
            let e = &self.entries[k];
            // A lease in the document as it was, or as it will be: the change must be durable
            // (the removal of a lease as much as its grant).
            durable |= e.had_lease || e.doc.has_lease();
            let body = if e.doc.is_empty() {
                None
            } else {
                let b = serde_json::to_vec(&e.doc).map_err(|err| Error::Corrupt {
                    path: self.files.cells_path(),
                    reason: format!("cannot encode the document of {k:?}: {err}"),
                })?;
                if b.len() + k.len() + EXTENT_HEADER > DOC_LIMIT {
                    return Err(Error::TooLarge {
                        resource: k.clone(),
                        what: "lock table document",
                        size: b.len() as u64,
                        limit: DOC_LIMIT as u64,
                    });
                }
                Some(b)
            };
            bodies.push((k.clone(), body));
        }
        // 2. Look up every bucket the change touches before writing anything: a damaged
        // bucket found half-way would leave a half-written change.
        let mut below_delta: BTreeMap<String, i64> = BTreeMap::new();
        let mut keys_delta: i64 = 0;
        for (k, body) in &bodies {
            if k.is_empty() {
                continue;
            }
            let e = &self.entries[k];
            let had = e.extent.is_some();
            let has = body.is_some();
            if had != has {
                let d = if has { 1 } else { -1 };
                keys_delta += d;
                for p in prefixes(k) {
                    *below_delta.entry(p.to_owned()).or_default() += d;
                }
            }
            if e.slot.is_none() {
                let s = self.find_slot(k)?;
                self.entries
                    .get_mut(k)
                    .expect("changed keys are loaded")
                    .slot = Some(s);
            }
        }
        for p in below_delta.keys() {
            match self.entries.get(p) {
                Some(e) if e.slot.is_some() => {}
                // Loaded by a scan of every document (pattern checks): its bucket was never
                // looked up.
                Some(_) => {
                    let s = self.find_slot(p)?;
                    if let Some(e) = self.entries.get_mut(p) {
                        e.slot = Some(s);
                    }
                }
                None if self.slots.contains_key(p) => {}
                None => {
                    let s = self.find_slot(p)?;
                    self.slots.insert(p.clone(), s);
                }
            }
        }
        // 3. Allocate the new extents (reads of free-list heads).
        let mut placed: Vec<Placement> = Vec::new();
        for (k, body) in bodies {
            let extent =
                match &body {
                    Some(b) => {
                        let class = layout::class_for(EXTENT_HEADER + k.len() + b.len())
                            .ok_or_else(|| Error::TooLarge {
                                resource: k.clone(),
                                what: "lock table document",
                                size: b.len() as u64,
                                limit: DOC_LIMIT as u64,
                            })?;
                        Some((self.alloc(class)?, class))
                    }
                    None => None,
                };
            placed.push(Placement {
                key: k,
                extent,
                body,
            });
        }
        // 4. Mark the change in progress.
        let mut marked = self.hdr.clone();
        marked.dirty = written;
        self.files.index.write_at(&marked.encode(), 0)?;
        // 5. Write the new documents.
        for p in &placed {
            if let (Some((cell, class)), Some(b)) = (p.extent, &p.body) {
                let bytes = layout::encode_doc(cell, class, written, &p.key, b);
                self.files.cells.write_at(&bytes, u64::from(cell) * CELL)?;
            }
        }
        if durable && placed.iter().any(|p| p.extent.is_some()) {
            self.files.cells.sync_data()?;
        }
        // 6. Free the old extents.
        let mut emptied = false;
        for p in &placed {
            let e = self
                .entries
                .get_mut(&p.key)
                .expect("changed keys are loaded");
            if let Some((cell, class)) = e.extent.take() {
                let next = self.hdr.free[class as usize];
                self.files.cells.write_at(
                    &layout::encode_free(cell, class, next),
                    u64::from(cell) * CELL,
                )?;
                self.hdr.free[class as usize] = cell + 1;
                emptied |= p.extent.is_none();
            }
            e.extent = p.extent;
        }
        if durable && emptied {
            self.files.cells.sync_data()?;
        }
        // 7. Buckets.
        for p in &placed {
            let doc = p.extent.map_or(0, |(c, _)| c + 1);
            if p.key.is_empty() {
                self.hdr.pattern_doc = doc;
                continue;
            }
            let e = self
                .entries
                .get_mut(&p.key)
                .expect("changed keys are loaded");
            let slot = e.slot.as_mut().expect("looked up above");
            slot.bucket.doc = doc;
            slot.dirty = true;
        }
        for (p, d) in &below_delta {
            let slot = match self.entries.get_mut(p).and_then(|e| e.slot.as_mut()) {
                Some(s) => s,
                None => self.slots.get_mut(p).expect("looked up above"),
            };
            let v = i64::from(slot.bucket.below) + d;
            slot.bucket.below = u32::try_from(v.max(0)).unwrap_or(u32::MAX);
            slot.dirty = true;
        }
        self.spread_new_buckets()?;
        let mut writes: Vec<(u64, Bucket)> = Vec::new();
        let mut used = self.hdr.used;
        let all_slots = self
            .entries
            .values_mut()
            .filter_map(|e| e.slot.as_mut())
            .chain(self.slots.values_mut());
        for slot in all_slots {
            if !slot.dirty {
                continue;
            }
            slot.dirty = false;
            match slot.at {
                Some(at) => writes.push((at, slot.bucket)),
                None if slot.bucket.is_tombstone() => {}
                None => {
                    let at = slot.insert_at;
                    let was_empty = matches!(
                        self.window.get(&at).map(|b| Bucket::decode(b)),
                        Some(BucketRead::Empty) | None
                    );
                    if was_empty {
                        used += 1;
                    }
                    slot.at = Some(at);
                    writes.push((at, slot.bucket));
                }
            }
        }
        writes.sort_by_key(|(at, _)| *at);
        for (at, b) in writes {
            let enc = b.encode();
            self.files.index.write_at(&enc, BUCKETS_AT + at * BUCKET)?;
            self.window.insert(at, enc);
        }
        // 8. Commit.
        self.hdr.used = used;
        self.hdr.keys =
            u64::try_from(i64::try_from(self.hdr.keys).unwrap_or(i64::MAX) + keys_delta)
                .unwrap_or(0);
        self.hdr.generation = written;
        self.hdr.dirty = 0;
        self.files.index.write_at(&self.hdr.encode(), 0)?;
        self.start = self.hdr.clone();
        for e in self.entries.values_mut() {
            e.changed = false;
            e.had = !e.doc.is_empty();
            e.had_lease = e.doc.has_lease();
        }
        self.durable = false;
        Ok(())
    }

    /// True when the index should be rebuilt larger (tombstones and keys fill half of it).
    pub(crate) fn wants_reindex(&self) -> bool {
        self.hdr.used > self.hdr.buckets / 2
    }

    fn alloc(&mut self, class: u8) -> Result<u32> {
        let head = self.hdr.free[class as usize];
        if head != 0 {
            let cell = head - 1;
            let mut b = [0u8; EXTENT_HEADER];
            read_at(&self.files.cells, &mut b, u64::from(cell) * CELL)?;
            match layout::decode_head(&b, cell) {
                ExtentHead::Free { class: c, next }
                    if c == class && u64::from(cell) < self.hdr.cells =>
                {
                    self.hdr.free[class as usize] = next;
                    return Ok(cell);
                }
                other => {
                    // A damaged free list: leave it (the next rebuild recovers the space).
                    tracing::warn!(
                        path = %self.files.cells_path().display(),
                        cell,
                        found = describe_head(&other),
                        "damaged free list in the lock table; allocating at the end instead"
                    );
                    self.hdr.free[class as usize] = 0;
                }
            }
        }
        let cell = self.hdr.cells;
        let end = cell + layout::cells_of(class);
        if end > CELLS_LIMIT {
            return Err(Error::TooLarge {
                resource: self.files.cells_path().display().to_string(),
                what: "lock table",
                size: end * CELL,
                limit: CELLS_LIMIT * CELL,
            });
        }
        self.hdr.cells = end;
        Ok(u32::try_from(cell).unwrap_or(u32::MAX))
    }
}

/// Called with every id handed out (tests watch them: the power-cut simulation).
#[cfg(test)]
pub(crate) type IssueHook = Box<dyn Fn(&Path, u64) + Send>;

#[cfg(test)]
pub(crate) static ISSUE_HOOK: std::sync::Mutex<Option<IssueHook>> = std::sync::Mutex::new(None);

#[cfg(test)]
fn issue_hook(dir: &Path, id: u64) {
    if let Some(f) = ISSUE_HOOK
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        f(dir, id);
    }
}

fn describe_head(h: &ExtentHead) -> &'static str {
    match h {
        ExtentHead::Doc { .. } => "a document",
        ExtentHead::Free { .. } => "a free extent",
        ExtentHead::Other => "no extent header",
        ExtentHead::Bad { .. } => "a damaged extent header",
    }
}

pub(crate) fn parse_doc(body: &[u8]) -> std::result::Result<Doc, serde_json::Error> {
    serde_json::from_slice(body)
}

/// Walks the extents of `cells` (first `limit` cells), calling `f(cell, head, bytes)` with
/// the extent's bytes (at least its header; for a document, header + key + body).
pub(crate) fn scan_extents(
    cells: &DataFile,
    limit: u64,
    mut f: impl FnMut(u32, &ExtentHead, &[u8]) -> Result<()>,
) -> Result<()> {
    let total = limit.min(file_len(cells)?.div_ceil(CELL));
    let mut chunk_start = 0u64; // in cells
    let mut chunk: Vec<u8> = Vec::new();
    let mut i = 0u64;
    while i < total {
        let chunk_cells = chunk.len() as u64 / CELL;
        if i < chunk_start || i >= chunk_start + chunk_cells {
            chunk_start = i;
            let n = (SCAN_CHUNK / CELL).min(total - i);
            chunk = vec![0u8; (n * CELL) as usize];
            read_at(cells, &mut chunk, i * CELL)?;
        }
        let off = ((i - chunk_start) * CELL) as usize;
        let cell = u32::try_from(i).unwrap_or(u32::MAX);
        let head = layout::decode_head(&chunk[off..], cell);
        match &head {
            ExtentHead::Doc {
                class,
                key_len,
                body_len,
                ..
            } => {
                let len = EXTENT_HEADER + usize::from(*key_len) + *body_len as usize;
                if off + len <= chunk.len() {
                    f(cell, &head, &chunk[off..off + len])?;
                } else {
                    let mut all = vec![0u8; len];
                    read_at(cells, &mut all, i * CELL)?;
                    f(cell, &head, &all)?;
                }
                i += layout::cells_of(*class);
            }
            ExtentHead::Free { class, .. } => {
                f(cell, &head, &chunk[off..off + EXTENT_HEADER])?;
                i += layout::cells_of(*class);
            }
            ExtentHead::Bad { class, .. } => {
                f(
                    cell,
                    &head,
                    &chunk[off..off + EXTENT_HEADER.min(chunk.len() - off)],
                )?;
                // A plausible class: its cells belong to it (a torn document's body is no
                // extent of its own).
                i += class.map_or(1, layout::cells_of).min(total - i).max(1);
            }
            ExtentHead::Other => {
                f(
                    cell,
                    &head,
                    &chunk[off..off + (CELL as usize).min(chunk.len() - off)],
                )?;
                i += 1;
            }
        }
    }
    Ok(())
}

/// The durable reservation: `Ok(None)` when it was never written.
pub(crate) fn read_reservation(files: &Files) -> Result<Option<u64>> {
    let slots = read_token_slots(files)?;
    reservation_of(&slots).map_err(|reason| corrupt(files.tokens_path(), reason))
}

pub(crate) type TokenSlots = [std::result::Result<Option<TokenSlot>, ()>; 2];

pub(crate) fn read_token_slots(files: &Files) -> Result<TokenSlots> {
    let mut out: TokenSlots = [Ok(None), Ok(None)];
    for (k, off) in TOKEN_SLOTS.iter().enumerate() {
        let mut b = [0u8; TOKEN_SLOT_LEN];
        read_at(&files.tokens, &mut b, *off)?;
        out[k] = TokenSlot::decode(&b);
    }
    Ok(out)
}

/// The reservation the slots prove. One damaged slot: the other one plus a window (each
/// write adds at most one window to the one before, so the damaged one held at most that).
pub(crate) fn reservation_of(slots: &TokenSlots) -> std::result::Result<Option<u64>, String> {
    match slots {
        [Ok(a), Ok(b)] => Ok(match (a, b) {
            (Some(a), Some(b)) => Some(a.reserved.max(b.reserved)),
            (Some(x), None) | (None, Some(x)) => Some(x.reserved),
            (None, None) => None,
        }),
        [Ok(Some(x)), Err(())] | [Err(()), Ok(Some(x))] => {
            Ok(Some(x.reserved.saturating_add(WINDOW).min(ID_LIMIT)))
        }
        // The first write ever was torn or damaged: it reserved one window from 0.
        [Ok(None), Err(())] | [Err(()), Ok(None)] => Ok(Some(WINDOW)),
        [Err(()), Err(())] => Err(
            "both slots of the fencing-token reservation are damaged: tokens already handed out are unknown, and a new one could repeat one"
                .into(),
        ),
    }
}

/// Writes `reserved` durably into the slot that is damaged, empty or older.
pub(crate) fn write_reservation(files: &Files, reserved: u64) -> Result<()> {
    let slots = read_token_slots(files)?;
    let gens: Vec<Option<u64>> = slots
        .iter()
        .map(|s| s.as_ref().ok().and_then(|s| s.map(|s| s.generation)))
        .collect();
    let target = match (gens[0], gens[1]) {
        (None, _) => 0,
        (_, None) => 1,
        (Some(a), Some(b)) => usize::from(b < a),
    };
    let generation = gens.iter().flatten().max().copied().unwrap_or(0) + 1;
    let slot = TokenSlot {
        generation,
        reserved,
    };
    files.tokens.write_at(&slot.encode(), TOKEN_SLOTS[target])?;
    files.tokens.sync_data()?;
    Ok(())
}

/// Writes `reserved` into both slots (a jump that a damaged slot must not undo).
pub(crate) fn write_reservation_both(files: &Files, reserved: u64) -> Result<()> {
    write_reservation(files, reserved)?;
    write_reservation(files, reserved)
}

/// Policy for extents that fail their checksum during a rebuild.
fn bad_extent_policy(cause: Cause, written: Option<u64>) -> BadPolicy {
    match cause {
        // The writer that died was writing this very extent: a torn write of a change that
        // never committed (and was never acknowledged).
        Cause::Crashed(d) if written == Some(d) => BadPolicy::DropQuietly,
        // After a restart every process-held record is dead and agent leases were written
        // durably before they were acknowledged; what a power cut tore is dropped, its bytes
        // saved for `maos doctor`.
        Cause::Reboot | Cause::Repair => BadPolicy::Save,
        _ => BadPolicy::Refuse,
    }
}

enum BadPolicy {
    DropQuietly,
    Save,
    Refuse,
}

/// Rebuilds the index from the documents in `cells` (see [`Cause`]); returns the new header.
pub(crate) fn rebuild(
    files: &Files,
    boot: [u8; 16],
    cause: Cause,
) -> Result<(Header, RebuildReport)> {
    let cells_path = files.cells_path();
    let mut report = RebuildReport::default();
    let mut old = [0u8; HEADER_LEN];
    read_at(&files.index, &mut old, 0)?;
    let old = Header::decode(&old);
    // The documents: the newest copy of each key.
    struct Found {
        cell: u32,
        class: u8,
        written: u64,
    }
    let mut docs: HashMap<String, Found> = HashMap::new();
    let mut taken: Vec<(u32, u8)> = Vec::new();
    let mut max_gen = 0u64;
    let mut max_id = 0u64;
    let mut bad: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut superseded: Vec<(u32, u8)> = Vec::new();
    let len_cells = file_len(&files.cells)?.div_ceil(CELL).min(CELLS_LIMIT);
    scan_extents(&files.cells, len_cells, |cell, head, bytes| {
        match head {
            ExtentHead::Doc {
                class,
                key_len,
                body_len,
                written,
                crc,
            } => {
                let parsed = layout::doc_parts(bytes, *key_len, *body_len, *crc)
                    .map(|(k, body)| (k.to_owned(), parse_doc(body)));
                match parsed {
                    Some((key, Ok(doc))) if valid_doc(&key, &doc) => {
                        max_gen = max_gen.max(*written);
                        max_id = max_id.max(doc.max_id());
                        let found = Found {
                            cell,
                            class: *class,
                            written: *written,
                        };
                        match docs.get(&key) {
                            Some(prev) if prev.written >= found.written => {
                                superseded.push((cell, *class))
                            }
                            Some(prev) => {
                                superseded.push((prev.cell, prev.class));
                                docs.insert(key, found);
                            }
                            None => {
                                docs.insert(key, found);
                            }
                        }
                    }
                    Some((key, Ok(_))) => {
                        // Checksum right, content impossible: a writer never writes that.
                        match bad_extent_policy(cause, None) {
                            BadPolicy::Refuse => {
                                return Err(corrupt(
                                    cells_path.clone(),
                                    format!(
                                        "the document of {key:?} at cell {cell} holds records a writer could not have written"
                                    ),
                                ));
                            }
                            _ => bad.push((cell, bytes.to_vec())),
                        }
                    }
                    Some((key, Err(e))) => match bad_extent_policy(cause, None) {
                        BadPolicy::Refuse => {
                            return Err(corrupt(
                                cells_path.clone(),
                                format!(
                                    "the document of {key:?} at cell {cell} does not parse: {e}"
                                ),
                            ));
                        }
                        _ => bad.push((cell, bytes.to_vec())),
                    },
                    None => match bad_extent_policy(cause, Some(*written)) {
                        BadPolicy::DropQuietly => {}
                        BadPolicy::Save => bad.push((cell, bytes.to_vec())),
                        BadPolicy::Refuse => {
                            return Err(corrupt(
                                cells_path.clone(),
                                format!(
                                    "the document at cell {cell} fails its checksum (damaged, not a write in progress)"
                                ),
                            ));
                        }
                    },
                }
            }
            ExtentHead::Bad { written, .. } => match bad_extent_policy(cause, *written) {
                BadPolicy::DropQuietly => {}
                BadPolicy::Save => bad.push((cell, bytes.to_vec())),
                BadPolicy::Refuse => {
                    // A damaged free-extent header is harmless; a damaged document header
                    // may hide a live lock.
                    if written.is_some() {
                        return Err(corrupt(
                            cells_path.clone(),
                            format!("the extent at cell {cell} has a damaged header"),
                        ));
                    }
                }
            },
            // Bytes that are no extent where an extent must start: never written by maos
            // (a writer dying as it starts a header leaves zeros or part of the magic).
            ExtentHead::Other if bytes.iter().any(|&b| b != 0) => match cause {
                Cause::Crashed(_) => {}
                Cause::Reboot | Cause::Repair => bad.push((cell, bytes.to_vec())),
                _ => {
                    return Err(corrupt(
                        cells_path.clone(),
                        format!(
                            "cell {cell} holds bytes that are neither a document nor a free extent"
                        ),
                    ));
                }
            },
            _ => {}
        }
        Ok(())
    })?;
    for f in docs.values() {
        taken.push((f.cell, f.class));
    }
    report.docs = docs.len();
    report.superseded = superseded.len();
    // Save what is dropped.
    for (cell, bytes) in &bad {
        let saved = save_damaged(files, *cell, bytes);
        report.dropped.push((u64::from(*cell), saved));
    }
    // The reservation.
    let slots = read_token_slots(files)?;
    let reserved = match reservation_of(&slots) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let used_before = old.as_ref().is_some_and(|h| h.next_id > 1) || max_id > 0;
            if used_before && cause != Cause::Repair {
                return Err(corrupt(
                    files.tokens_path(),
                    "the fencing-token reservation is missing although tokens were handed out: a new token could repeat one",
                ));
            }
            let floor = if used_before {
                max_id.saturating_add(1 << 40)
            } else {
                0
            };
            if floor > 0 {
                write_reservation_both(files, floor)?;
            }
            floor
        }
        Err(reason) if cause == Cause::Repair => {
            let floor = max_id
                .max(old.as_ref().map_or(0, |h| h.reserved))
                .saturating_add(1 << 40)
                .min(ID_LIMIT);
            tracing::warn!(reason, floor, "fencing-token reservation rebuilt by repair");
            write_reservation_both(files, floor)?;
            floor
        }
        Err(reason) => return Err(corrupt(files.tokens_path(), reason)),
    };
    let mut reserved = reserved;
    let mut next_id = if cause.jumps() {
        reserved.saturating_add(1)
    } else {
        old.as_ref().map_or(1, |h| h.next_id)
    };
    next_id = next_id.max(max_id.saturating_add(1)).max(1);
    if next_id.saturating_sub(1) > reserved {
        // Ids above the reservation in the documents (a table older than the reservation,
        // or tampering): reserve beyond them before anything else is handed out.
        reserved = next_id
            .saturating_sub(1)
            .saturating_add(WINDOW)
            .min(ID_LIMIT);
        write_reservation_both(files, reserved)?;
    }
    // Without a jump the header's own reservation still holds (it never exceeds the durable
    // one); with a jump the next id lies above the durable reservation and the next grant
    // extends it.
    let hdr_reserved = match &old {
        Some(h) if !cause.jumps() && h.reserved.min(reserved) + 1 >= next_id => {
            h.reserved.min(reserved)
        }
        _ => reserved,
    };
    // Keys and below counts.
    let mut below: HashMap<String, u32> = HashMap::new();
    let mut plain = 0u64;
    for key in docs.keys() {
        if key.is_empty() {
            continue;
        }
        plain += 1;
        for p in prefixes(key) {
            *below.entry(p.to_owned()).or_default() += 1;
        }
    }
    let mut all_keys: BTreeSet<&str> = docs
        .keys()
        .filter(|k| !k.is_empty())
        .map(String::as_str)
        .collect();
    all_keys.extend(below.keys().map(String::as_str));
    let buckets = (all_keys.len() as u64 * 4)
        .next_power_of_two()
        .max(MIN_BUCKETS);
    let mut array = vec![0u8; (buckets * BUCKET) as usize];
    let mut used = 0u64;
    for key in &all_keys {
        let (h1, h2) = layout::key_hashes(key);
        let mut i = layout::home(h1, buckets);
        while array[(i * BUCKET) as usize..((i + 1) * BUCKET) as usize]
            .iter()
            .any(|&b| b != 0)
        {
            i = (i + 1) & (buckets - 1);
        }
        let b = Bucket {
            h1,
            h2,
            doc: docs.get(*key).map_or(0, |f| f.cell + 1),
            below: below.get(*key).copied().unwrap_or(0),
        };
        array[(i * BUCKET) as usize..((i + 1) * BUCKET) as usize].copy_from_slice(&b.encode());
        used += 1;
    }
    // Free space: every cell not in a kept document.
    taken.sort_unstable();
    let end = taken
        .iter()
        .map(|(c, k)| u64::from(*c) + layout::cells_of(*k))
        .max()
        .unwrap_or(0);
    let mut free_heads = [0u32; CLASSES];
    let mut free_writes: Vec<(u32, u8, u32)> = Vec::new();
    let mut at = 0u64;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (c, k) in &taken {
        let c = u64::from(*c);
        if c > at {
            runs.push((at, c));
        }
        at = at.max(c + layout::cells_of(*k));
    }
    for (mut a, b) in runs {
        while a < b {
            let mut class = (CLASSES - 1) as u8;
            while layout::cells_of(class) > b - a {
                class -= 1;
            }
            let cell = u32::try_from(a).unwrap_or(u32::MAX);
            free_writes.push((cell, class, free_heads[class as usize]));
            free_heads[class as usize] = cell + 1;
            a += layout::cells_of(class);
        }
    }
    let generation = old
        .as_ref()
        .map_or(0, |h| h.generation)
        .max(max_gen)
        .saturating_add(1);
    let hdr = Header {
        generation,
        dirty: 0,
        next_id,
        reserved: hdr_reserved,
        buckets,
        used,
        keys: plain,
        cells: end,
        pattern_doc: docs.get("").map_or(0, |f| f.cell + 1),
        free: free_heads,
        boot,
    };
    // Write: mark dirty (a rebuild that dies is redone), free extents, buckets, header.
    let mut marked = hdr.clone();
    marked.dirty = generation;
    files.index.write_at(&marked.encode(), 0)?;
    for (cell, class, next) in free_writes {
        files.cells.write_at(
            &layout::encode_free(cell, class, next),
            u64::from(cell) * CELL,
        )?;
    }
    files.cells.set_len(end * CELL)?;
    files.index.set_len(BUCKETS_AT + buckets * BUCKET)?;
    files.index.write_at(&array, BUCKETS_AT)?;
    files.index.write_at(&hdr.encode(), 0)?;
    report.next_id = next_id;
    if !matches!(cause, Cause::Fresh | Cause::Reindex) {
        tracing::info!(
            ?cause,
            docs = report.docs,
            superseded = report.superseded,
            dropped = report.dropped.len(),
            next_id,
            "lock table index rebuilt"
        );
    }
    Ok((hdr, report))
}

/// A document whose records belong where they are: the pattern document holds patterns, a
/// plain key holds records on exactly that key.
fn valid_doc(key: &str, doc: &Doc) -> bool {
    let ok = |r: &maos_core::ResourceName| {
        if key.is_empty() {
            r.is_pattern()
        } else {
            r.as_str() == key
        }
    };
    !doc.is_empty()
        && doc.holders.iter().all(|h| ok(&h.resource))
        && doc.waiters.iter().all(|w| ok(&w.resource))
}

/// Saves the bytes of a dropped extent as `damaged.<ms>.<cell>` beside the table, for
/// `maos doctor` (best effort).
fn save_damaged(files: &Files, cell: u32, bytes: &[u8]) -> Option<PathBuf> {
    let path = files.dir.join(format!("damaged.{}.{cell}", now_ms()));
    match maos_core::fsx::write_new(&path, bytes) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), cell, "a lock table document that fails its checksum was set aside");
            Some(path)
        }
        Err(e) => {
            tracing::warn!(
                cell,
                error = &e as &dyn std::error::Error,
                "cannot save a damaged lock table document"
            );
            None
        }
    }
}
