//! The two small state files beside a channel's segments.
//!
//! `head` is a hint, written in place (never fsynced) by every writer under the channel's
//! lock after each append: the active segment, the last position assigned, the reservation in
//! force and the boot it was written in. Within one boot it lets a writer find the active
//! segment without listing the directory, and tells it when the log has become shorter than
//! it was (a truncated segment, a damaged last record). A head from another boot, or one that
//! does not parse, is ignored.
//!
//! `epoch.json` is durable (published whole and fsynced): the highest position any writer
//! may have assigned (`reserved`), the boot in which that reservation was made, and the
//! positions skipped so far (`jumps`). A writer never assigns a position above `reserved`
//! without first publishing a larger reservation; after a restart (another boot) or when the
//! head shows that the log lost records, the next position is `reserved + 1`, so no position
//! is ever used twice.

use std::path::Path;

use maos_core::fsx;
use serde::{Deserialize, Serialize};

use super::{EPOCH_FILE, GapCause, HEAD_FILE, Log};
use crate::{Error, Result};

/// Bytes of the head file: one JSON object padded with spaces, then `\n`.
pub(crate) const HEAD_SIZE: usize = 256;
/// Most jumps remembered in `epoch.json` (the oldest are dropped).
const MAX_JUMPS: usize = 64;
/// Largest `epoch.json` a reader accepts.
const EPOCH_LIMIT: u64 = 64 << 10;

/// The head hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Head {
    /// First position of the active segment.
    pub(crate) segment: u64,
    /// The last position assigned.
    pub(crate) last: u64,
    /// The reservation in force (a copy of `epoch.json`'s).
    pub(crate) reserved: u64,
    /// The boot it was written in.
    pub(crate) boot: String,
}

impl Head {
    /// The fixed-size line written to the head file.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        if v.len() >= HEAD_SIZE {
            // A boot id is 36 characters; nothing else is long. Never write a truncated head.
            v = b"{}".to_vec();
        }
        v.resize(HEAD_SIZE - 1, b' ');
        v.push(b'\n');
        v
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(bytes).ok().filter(|h| {
            h.segment > 0 && h.last <= h.reserved && h.segment <= h.last.saturating_add(1)
        })
    }

    /// True when it was written in `boot` (and so reflects every maos writer since).
    pub(crate) fn current(&self, boot: &str) -> bool {
        !boot.is_empty() && self.boot == boot
    }
}

/// Positions skipped by a writer, as recorded in `epoch.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Jump {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) cause: GapCause,
    /// Milliseconds since the Unix epoch.
    pub(crate) at: u64,
}

/// The durable reservation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Epoch {
    /// The boot in which `reserved` was published.
    pub(crate) boot: String,
    /// No writer has assigned a position above this.
    pub(crate) reserved: u64,
    /// The latest skips, oldest first.
    #[serde(default)]
    pub(crate) jumps: Vec<Jump>,
}

impl Epoch {
    /// The recorded cause of a gap `from..=to` seen by a reader: of the jumps that overlap
    /// it, the gravest (damage before unknown before restart).
    pub(crate) fn cause_of(&self, from: u64, to: u64) -> GapCause {
        let rank = |c: GapCause| match c {
            GapCause::Damage => 2,
            GapCause::Unknown => 1,
            GapCause::Restart => 0,
        };
        self.jumps
            .iter()
            .filter(|j| j.from <= to && from <= j.to)
            .map(|j| j.cause)
            .max_by_key(|c| rank(*c))
            .unwrap_or(GapCause::Unknown)
    }

    pub(crate) fn push_jump(&mut self, jump: Jump) {
        self.jumps.push(jump);
        if self.jumps.len() > MAX_JUMPS {
            let extra = self.jumps.len() - MAX_JUMPS;
            self.jumps.drain(..extra);
        }
    }
}

impl Log {
    pub(crate) fn head_path(&self) -> std::path::PathBuf {
        self.dir.join(HEAD_FILE)
    }

    pub(crate) fn epoch_path(&self) -> std::path::PathBuf {
        self.dir.join(EPOCH_FILE)
    }

    /// Reads the head hint (without a lock); `None` when it is missing or does not parse.
    pub(crate) fn read_head(&self) -> Option<Head> {
        read_head_at(&self.head_path())
    }

    /// Reads `epoch.json`: `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// [`Error::Damaged`] when it exists but cannot be used.
    pub(crate) fn read_epoch(&self) -> Result<Option<Epoch>> {
        let path = self.epoch_path();
        match fsx::read_json::<Epoch>(&path, EPOCH_LIMIT) {
            Ok(e) => Ok(Some(e)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::Damaged {
                channel: self.channel.clone(),
                path,
                reason: e.to_string(),
                remedy: "without it the channel cannot prove that no position is used twice; \
                         `maos doctor --repair` rebuilds it"
                    .into(),
            }),
        }
    }

    /// Publishes `epoch` durably (under the writers' lock).
    pub(crate) fn write_epoch(&self, epoch: &Epoch) -> Result<()> {
        fsx::write_json_replace(&self.epoch_path(), epoch).map_err(|e| self.core(e))
    }
}

/// Reads a head file; `None` when missing, not a regular file, or unparsable.
pub(crate) fn read_head_at(path: &Path) -> Option<Head> {
    use std::os::unix::fs::FileExt;
    let f = fsx::open_read(path).ok()?;
    let mut buf = [0u8; HEAD_SIZE];
    let n = f.read_at(&mut buf, 0).ok()?;
    Head::decode(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_at_a_fixed_size_and_refuse_nonsense() {
        let h = Head {
            segment: 5,
            last: 9,
            reserved: 1024,
            boot: "0b5c9f0e-1f1c-4f55-9f57-2f1d3a1f8e11".into(),
        };
        let e = h.encode();
        assert_eq!(e.len(), HEAD_SIZE);
        assert_eq!(Head::decode(&e), Some(h.clone()));
        assert!(h.current("0b5c9f0e-1f1c-4f55-9f57-2f1d3a1f8e11"));
        assert!(!h.current("other"));
        assert!(!h.current(""));
        // Torn, empty, or inconsistent heads are no hint at all.
        assert_eq!(Head::decode(&e[..40]), None);
        assert_eq!(Head::decode(b""), None);
        let bad = Head {
            last: 2000,
            ..h.clone()
        };
        assert_eq!(Head::decode(&bad.encode()), None);
        let bad = Head { segment: 11, ..h };
        assert_eq!(Head::decode(&bad.encode()), None);
    }

    #[test]
    fn jumps_are_bounded_and_explain_gaps() {
        let mut e = Epoch::default();
        for i in 0..100u64 {
            e.push_jump(Jump {
                from: i * 10 + 1,
                to: i * 10 + 5,
                cause: if i % 2 == 0 {
                    GapCause::Restart
                } else {
                    GapCause::Damage
                },
                at: 0,
            });
        }
        assert_eq!(e.jumps.len(), MAX_JUMPS);
        assert_eq!(e.cause_of(992, 995), GapCause::Damage);
        assert_eq!(e.cause_of(981, 981), GapCause::Restart);
        assert_eq!(e.cause_of(1, 5), GapCause::Unknown, "forgotten");
        assert_eq!(e.cause_of(996, 1000), GapCause::Unknown);
    }
}
