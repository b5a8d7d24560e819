//! Keeping bad bytes and foreign files out of the way without losing them: a bounded copy of a
//! damaged record (the record itself stays where it is, readers skip it), a foreign file moved
//! aside whole.

use std::path::{Path, PathBuf};

use maos_core::fsx;

use super::{Log, Problem, QUARANTINE_COPY_LIMIT, segment_name};

impl Log {
    /// Moves a foreign file (anything in the channel directory that is not part of the log)
    /// to `quarantine/`; returns the problem to report (`None` when another reader moved it
    /// first).
    pub(crate) fn quarantine_file(&self, path: &Path) -> Option<Problem> {
        let qdir = self.quarantine_dir();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = qdir.join(format!("{}.{}.foreign", name, maos_core::now_ms()));
        let moved = fsx::create_dir_private(&qdir).and_then(|()| fsx::rename(path, &target));
        let quarantined = match moved {
            Ok(()) => Some(target),
            Err(_) if std::fs::symlink_metadata(path).is_err() => return None,
            Err(e) => {
                tracing::warn!(channel = %self.channel, path = %path.display(),
                    error = &e as &dyn std::error::Error, "cannot quarantine a foreign file");
                None
            }
        };
        tracing::warn!(channel = %self.channel, path = %path.display(),
            "foreign file in a channel directory quarantined");
        Some(Problem {
            path: path.to_path_buf(),
            offset: None,
            position: None,
            reason: "a file that is not part of the channel's log (moved aside; put it back only \
                     if you know what it is)"
                .into(),
            quarantined,
        })
    }

    /// Copies at most [`QUARANTINE_COPY_LIMIT`] bytes of a bad record (`total` bytes long)
    /// found in segment `seg` at `offset` to `quarantine/<segment>-<offset>.<what>`. The copy
    /// is evidence; the bytes stay in the segment, which readers skip.
    pub(crate) fn quarantine_bytes(
        &self,
        seg: u64,
        offset: u64,
        what: &str,
        bytes: &[u8],
        total: u64,
    ) -> Option<PathBuf> {
        let qdir = self.quarantine_dir();
        let target = qdir.join(format!("{}-{offset}.{what}", segment_name(seg)));
        if std::fs::symlink_metadata(&target).is_ok() {
            return Some(target);
        }
        let cap = bytes.len().min(QUARANTINE_COPY_LIMIT);
        let mut content = bytes[..cap].to_vec();
        if total > cap as u64 {
            content.extend_from_slice(
                format!("\n[maos: the first {cap} of {total} bytes; the rest was not copied]\n")
                    .as_bytes(),
            );
        }
        match fsx::create_dir_private(&qdir).and_then(|()| fsx::write_new(&target, &content)) {
            Ok(()) | Err(maos_core::Error::AlreadyExists { .. }) => Some(target),
            Err(e) => {
                tracing::warn!(channel = %self.channel,
                    error = &e as &dyn std::error::Error, "cannot quarantine bytes");
                None
            }
        }
    }
}
