//! The writer: under the channel's kernel lock (taken with a timeout), find the active
//! segment and the next position, repair a torn tail, reserve positions durably, append whole
//! records, update the head hint; then, outside the lock, `fdatasync` (concurrent writers
//! share the flush) and only then acknowledge.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use maos_core::fsx::{self, DataFile, LockFile};

use super::state::{HEAD_SIZE, Head};
use super::tail::{self, TailError};
use super::{Epoch, GapCause, Jump, Log, MAX_APPEND, MAX_TORN, QUARANTINE_COPY_LIMIT};
use crate::record;
use crate::{Error, Result};

/// This process's writer state of one channel.
pub(crate) struct Writer {
    lock: LockFile,
    state: WriterState,
}

pub(crate) struct WriterState {
    head: DataFile,
    active: Option<Active>,
}

/// The segment being written.
struct Active {
    first: u64,
    file: Arc<DataFile>,
    /// End of the last complete record as last seen under the lock (`u64::MAX`: unknown).
    len: u64,
    /// The last position in the segment (`first - 1` when it has none).
    last: u64,
}

impl Active {
    fn linked(&self) -> bool {
        self.file.file().metadata().is_ok_and(|m| m.nlink() > 0)
    }
}

/// What the writer decided under the lock before appending.
struct Plan {
    /// The first position to assign.
    next: u64,
    /// The reservation in force (`0`: unknown, publish one).
    reserved: u64,
    /// Positions skipped before `next`, when the writer must jump.
    jump: Option<Jump>,
    /// `epoch.json` if it was read.
    epoch: Option<Epoch>,
}

impl Log {
    /// Runs `f` on this process's writer state while holding the channel's kernel lock,
    /// creating the directory, the lock file and the head file on first use. Waits at most
    /// the configured lock timeout; the error then names the holder.
    pub(crate) fn locked<R>(&self, f: impl FnOnce(&mut WriterState) -> Result<R>) -> Result<R> {
        let mut guard = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            fsx::create_dir_private(&self.dir).map_err(|e| self.core(e))?;
            let lock = LockFile::open(&self.lock_path()).map_err(|e| self.core(e))?;
            let head = DataFile::open_rw(&self.head_path()).map_err(|e| self.core(e))?;
            *guard = Some(Writer {
                lock,
                state: WriterState { head, active: None },
            });
        }
        let Some(Writer { lock, state }) = guard.as_mut() else {
            unreachable!("the writer state was just set");
        };
        let _flock = lock
            .exclusive(self.config.lock_timeout)
            .map_err(|e| self.core(e))?;
        let res = f(state);
        if res.is_err() {
            // Forget cached state: the next writer looks at everything again.
            state.active = None;
        }
        res
    }

    /// Appends the records (message bytes, each already checked) and returns the position of
    /// the first. Durable and visible when this returns.
    pub(crate) fn append(&self, msgs: &[&[u8]]) -> Result<u64> {
        if msgs.is_empty() {
            return Err(self.io(
                "append",
                &self.dir,
                std::io::Error::other("nothing to append"),
            ));
        }
        let (file, first) = self.locked(|st| self.append_locked(st, msgs))?;
        // Outside the lock: concurrent writers' appends share this flush.
        file.sync_data().map_err(|e| self.core(e))?;
        Ok(first)
    }

    fn append_locked(&self, st: &mut WriterState, msgs: &[&[u8]]) -> Result<(Arc<DataFile>, u64)> {
        let plan = self.prepare(st)?;
        let n = msgs.len() as u64;
        let next = plan.next;
        let last_new = next.checked_add(n - 1).ok_or_else(|| {
            self.io(
                "append",
                &self.dir,
                std::io::Error::other(format!(
                    "no position left after {} for {n} message(s)",
                    next - 1
                )),
            )
        })?;
        let mut chunks: Vec<Vec<u8>> = vec![Vec::new()];
        let mut total = 0u64;
        for (i, m) in msgs.iter().enumerate() {
            let mut rec = Vec::with_capacity(m.len() + record::MAX_OVERHEAD);
            record::encode(next + i as u64, m, &mut rec);
            total += rec.len() as u64;
            let cur = chunks.last_mut().expect("one chunk at least");
            if !cur.is_empty() && cur.len() + rec.len() > MAX_APPEND {
                chunks.push(rec);
            } else {
                cur.extend_from_slice(&rec);
            }
        }
        // Publish a larger reservation first, recording any jump, so that no position
        // above the durable reservation is ever visible.
        let mut reserved = plan.reserved;
        if plan.jump.is_some() || last_new > reserved {
            let mut e = match plan.epoch {
                Some(e) => e,
                None => self.read_epoch()?.unwrap_or_default(),
            };
            if let Some(j) = plan.jump.clone() {
                tracing::warn!(channel = %self.channel, from = j.from, to = j.to,
                    cause = ?j.cause, "positions skipped so that none is used twice");
                e.push_jump(j);
            }
            e.boot.clone_from(&self.config.boot_id);
            e.reserved = e
                .reserved
                .max(last_new.saturating_add(self.config.reserve.max(1)));
            self.write_epoch(&e)?;
            reserved = e.reserved;
        }
        let (mut active, rolled) = match st.active.take() {
            Some(a)
                if plan.jump.is_none()
                    && a.last.checked_add(1) == Some(next)
                    && !(a.len > 0 && a.len.saturating_add(total) > self.config.segment_size) =>
            {
                (a, false)
            }
            Some(a) => {
                self.seal(&a)?;
                (self.create_segment(next)?, true)
            }
            None => (self.create_segment(next)?, true),
        };
        let mut written = 0u64;
        for c in &chunks {
            if let Err(e) = active.file.write_at(c, active.len + written) {
                // Leave no partial record behind (best effort; the next writer repairs it
                // anyway).
                let _ = active.file.set_len(active.len);
                return Err(self.core(e));
            }
            written += c.len() as u64;
        }
        active.len += written;
        active.last = last_new;
        let file = Arc::clone(&active.file);
        let first = active.first;
        st.active = Some(active);
        self.write_head(
            st,
            &Head {
                segment: first,
                last: last_new,
                reserved,
                boot: self.config.boot_id.clone(),
            },
        );
        if rolled
            && let Some(retention) = self.config.retain
            && let Err(e) = self.prune_locked(retention, st)
        {
            tracing::warn!(channel = %self.channel, error = &e as &dyn std::error::Error,
                "automatic pruning failed");
        }
        Ok((file, next))
    }

    /// Under the lock: makes `st.active` the newest segment with a repaired tail (`None`
    /// when there is no segment) and decides the next position.
    fn prepare(&self, st: &mut WriterState) -> Result<Plan> {
        let boot = self.config.boot_id.as_str();
        let head = read_head_file(&st.head).filter(|h| h.current(boot));
        let mut damage: Option<String> = None;
        // The active segment: the head's (within this boot every writer keeps it), or the
        // newest on disk.
        let mut active = st
            .active
            .take()
            .filter(|a| head.as_ref().is_some_and(|h| h.segment == a.first) && a.linked());
        if active.is_none()
            && let Some(h) = &head
        {
            match self.open_segment(h.segment) {
                Ok(a) => active = Some(a),
                Err(Error::Core { source, .. }) if source.is_not_found() => {
                    damage = Some(format!(
                        "its active segment {} is missing",
                        self.segment_path(h.segment).display()
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        if active.is_none() {
            let listing = self.list(&mut Vec::new())?;
            if let Some(s) = listing.newest() {
                active = Some(self.open_segment(s)?);
            }
        }
        // Its tail (and a roll another writer made before it could update the head).
        let mut found: Option<u64> = None;
        let empty_channel = active.is_none();
        while let Some(a) = active.as_mut() {
            let size = a.file.len().map_err(|e| self.core(e))?;
            if size == a.len {
                found = Some(a.last);
                break;
            }
            let t = match tail::scan(a.file.file(), size, a.first) {
                Ok(t) => t,
                Err(TailError::Garbage { size }) => tail::Tail {
                    valid_end: size,
                    last: None,
                    damage: Some(format!(
                        "it ends with more than {MAX_TORN} bytes without a line break, which no \
                         writer leaves"
                    )),
                },
                Err(e) => return Err(self.tail_error(&a.file, e)),
            };
            if t.valid_end < size {
                self.repair_tail(a, t.valid_end, size)?;
            }
            a.len = t.valid_end;
            match t.last {
                Some(l) => {
                    a.last = l;
                    found = Some(l);
                }
                None => {
                    damage.get_or_insert(format!(
                        "{}: {}",
                        self.segment_path(a.first).display(),
                        t.damage.unwrap_or_default()
                    ));
                    a.last = a.first - 1;
                    found = None;
                    break;
                }
            }
            let Some(n) = a.last.checked_add(1).filter(|&n| n != a.first) else {
                break;
            };
            match self.open_segment(n) {
                Ok(newer) => active = Some(newer),
                Err(Error::Core { source, .. }) if source.is_not_found() => break,
                Err(e) => return Err(e),
            }
        }
        let plan = match &head {
            Some(h) if damage.is_none() && found.is_some_and(|l| l >= h.last) => Plan {
                next: self.position_after(found.unwrap_or(0))?,
                reserved: h.reserved,
                jump: None,
                epoch: None,
            },
            Some(h) => {
                // The log is shorter than this boot's writers left it: records were lost.
                let e = self.read_epoch()?.unwrap_or_default();
                let base = h
                    .last
                    .max(h.reserved)
                    .max(e.reserved)
                    .max(found.unwrap_or(0));
                self.jump_plan(base, found, active.as_ref(), GapCause::Damage, damage, e)?
            }
            None => match self.read_epoch()? {
                None if empty_channel => Plan {
                    next: 1,
                    reserved: 0,
                    jump: None,
                    epoch: None,
                },
                None => {
                    // A channel without a reservation (an older maos, or its epoch was
                    // removed): continue after the largest position found.
                    let l = match found {
                        Some(l) => l,
                        None => self.max_position(active.as_ref())?,
                    };
                    Plan {
                        next: self.position_after(l)?,
                        reserved: 0,
                        jump: None,
                        epoch: None,
                    }
                }
                Some(e) => {
                    let base = e.reserved.max(found.unwrap_or(0));
                    if damage.is_none() && found == Some(base) {
                        Plan {
                            next: self.position_after(base)?,
                            reserved: 0,
                            jump: None,
                            epoch: Some(e),
                        }
                    } else {
                        let cause = if damage.is_some() || (found.is_none() && !empty_channel) {
                            GapCause::Damage
                        } else if e.boot != boot {
                            GapCause::Restart
                        } else {
                            GapCause::Unknown
                        };
                        self.jump_plan(base, found, active.as_ref(), cause, damage, e)?
                    }
                }
            },
        };
        st.active = active;
        Ok(plan)
    }

    fn jump_plan(
        &self,
        base: u64,
        found: Option<u64>,
        active: Option<&Active>,
        cause: GapCause,
        damage: Option<String>,
        epoch: Epoch,
    ) -> Result<Plan> {
        let next = self.position_after(base)?;
        let from = found.map_or_else(|| active.map_or(1, |a| a.first), |l| l + 1);
        if let Some(d) = &damage {
            tracing::error!(channel = %self.channel, damage = %d,
                "the channel's log lost records; new positions continue after {base}");
        }
        Ok(Plan {
            next,
            reserved: 0,
            jump: (from < next).then(|| Jump {
                from,
                to: next - 1,
                cause,
                at: maos_core::now_ms(),
            }),
            epoch: Some(epoch),
        })
    }

    fn position_after(&self, p: u64) -> Result<u64> {
        p.checked_add(1).ok_or_else(|| {
            self.io(
                "append",
                &self.dir,
                std::io::Error::other(format!("no position left after {p}")),
            )
        })
    }

    pub(crate) fn tail_error(&self, file: &DataFile, e: TailError) -> Error {
        match e {
            TailError::Io(e) => self.io("read", file.path(), e),
            TailError::Garbage { size } => Error::Damaged {
                channel: self.channel.clone(),
                path: file.path().to_path_buf(),
                reason: format!(
                    "the segment ({size} bytes) ends with more than {MAX_TORN} bytes without a \
                     line break, which no writer leaves"
                ),
                remedy: "`maos doctor --repair` cuts the damaged tail off (keeping its first \
                         bytes in quarantine/)"
                    .into(),
            },
        }
    }

    /// The largest position of any good record in `a` (a full scan: only for channels
    /// without a reservation whose last record is damaged).
    fn max_position(&self, a: Option<&Active>) -> Result<u64> {
        let Some(a) = a else { return Ok(0) };
        let mut max = a.first - 1;
        let end = a.file.len().map_err(|e| self.core(e))?;
        tail::for_each_line(a.file.file(), 0, end, |_, line| {
            if let Some(p) = line.and_then(|l| record::parse(l).ok()) {
                max = max.max(p.seq);
            }
        })
        .map_err(|e| self.io("read", a.file.path(), e))?;
        Ok(max)
    }

    fn repair_tail(&self, a: &Active, valid_end: u64, size: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let n = (size - valid_end).min(QUARANTINE_COPY_LIMIT as u64) as usize;
        let mut torn = vec![0u8; n];
        let _ = a.file.file().read_exact_at(&mut torn, valid_end);
        let q = self.quarantine_bytes(a.first, valid_end, "torn", &torn, size - valid_end);
        a.file.set_len(valid_end).map_err(|e| self.core(e))?;
        tracing::warn!(channel = %self.channel, path = %a.file.path().display(),
            offset = valid_end, bytes = size - valid_end, quarantined = ?q,
            "repaired a torn record left by a killed writer");
        Ok(())
    }

    fn open_segment(&self, first: u64) -> Result<Active> {
        let file =
            DataFile::open_existing_rw(&self.segment_path(first)).map_err(|e| self.core(e))?;
        Ok(Active {
            first,
            file: Arc::new(file),
            len: u64::MAX,
            last: first - 1,
        })
    }

    /// Creates segment `first` (empty, mode 0600, its name durable), or opens it if it
    /// exists.
    fn create_segment(&self, first: u64) -> Result<Active> {
        let file = DataFile::open_rw(&self.segment_path(first)).map_err(|e| self.core(e))?;
        let len = file.len().map_err(|e| self.core(e))?;
        if len != 0 {
            return Err(Error::Damaged {
                channel: self.channel.clone(),
                path: file.path().to_path_buf(),
                reason: format!("a new segment must start empty, this one holds {len} bytes"),
                remedy: "`maos doctor` explains the channel's state".into(),
            });
        }
        tracing::debug!(channel = %self.channel, segment = first, "new segment");
        Ok(Active {
            first,
            file: Arc::new(file),
            len: 0,
            last: first - 1,
        })
    }

    /// Makes a segment that is being closed durable, so every segment but the newest is.
    fn seal(&self, a: &Active) -> Result<()> {
        a.file.sync_data().map_err(|e| self.core(e))
    }

    fn write_head(&self, st: &mut WriterState, head: &Head) {
        let res = (|| {
            if st.head.len()? != HEAD_SIZE as u64 {
                st.head.set_len(HEAD_SIZE as u64)?;
            }
            st.head.write_at(&head.encode(), 0)
        })();
        if let Err(e) = res {
            tracing::warn!(channel = %self.channel, error = &e as &dyn std::error::Error,
                "cannot update the head hint");
        }
    }

    /// Under the lock: starts a new, empty segment after the newest position (so that all
    /// older ones can go); returns its first position.
    pub(crate) fn roll_locked(&self, st: &mut WriterState) -> Result<u64> {
        let plan = self.prepare(st)?;
        if let Some(a) = &st.active
            && a.len == 0
            && a.first == plan.next
            && plan.jump.is_none()
            && plan.next <= plan.reserved
        {
            return Ok(plan.next);
        }
        let reserved = if plan.next > plan.reserved || plan.jump.is_some() {
            let mut e = match plan.epoch {
                Some(e) => e,
                None => self.read_epoch()?.unwrap_or_default(),
            };
            if let Some(j) = plan.jump {
                e.push_jump(j);
            }
            e.boot.clone_from(&self.config.boot_id);
            e.reserved = e
                .reserved
                .max(plan.next.saturating_add(self.config.reserve.max(1)));
            self.write_epoch(&e)?;
            e.reserved
        } else {
            plan.reserved
        };
        if let Some(a) = st.active.take() {
            self.seal(&a)?;
        }
        let fresh = self.create_segment(plan.next)?;
        let first = fresh.first;
        st.active = Some(fresh);
        self.write_head(
            st,
            &Head {
                segment: first,
                last: plan.next - 1,
                reserved,
                boot: self.config.boot_id.clone(),
            },
        );
        Ok(first)
    }
}

fn read_head_file(f: &DataFile) -> Option<Head> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; HEAD_SIZE];
    let n = f.file().read_at(&mut buf, 0).ok()?;
    Head::decode(&buf[..n])
}

impl Log {
    /// Under the lock: the newest position (after repairing a torn tail).
    pub(crate) fn newest_locked(&self, st: &mut WriterState) -> Result<u64> {
        self.prepare(st)?;
        Ok(st.active.as_ref().map_or(0, |a| a.last))
    }

    /// Under the lock: makes the head hint unusable, so the next writer (in any process)
    /// decides from the durable state (`epoch.json`) and the segments.
    pub(crate) fn invalidate_head(&self, st: &mut WriterState) {
        self.write_head(
            st,
            &Head {
                segment: 1,
                last: 0,
                reserved: 0,
                boot: String::new(),
            },
        );
        st.active = None;
    }

    /// Under the lock: whether the active segment holds no record.
    pub(crate) fn active_is_empty(&self, st: &WriterState) -> bool {
        st.active.as_ref().is_some_and(|a| a.len == 0)
    }
}

#[cfg(test)]
impl Log {
    /// What a sender killed between its write and its `fdatasync` leaves: visible records
    /// that are not durable.
    pub(crate) fn append_unsynced(&self, msgs: &[&[u8]]) -> Result<u64> {
        self.locked(|st| self.append_locked(st, msgs))
            .map(|(_, first)| first)
    }
}
