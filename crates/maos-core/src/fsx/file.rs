//! [`DataFile`]: a file written in place (an append-only log, a table of slots), every
//! mutation of which goes through `fsx` so the power-cut simulator sees it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::sim;
use crate::{Error, Result};

/// A regular file that a store writes in place: appends, positioned writes, truncation and
/// `fsync`, each recorded by [`sim`] when a recording covers it. Reading goes through
/// [`DataFile::file`].
///
/// Opening refuses symbolic links and anything but a regular file, never blocks (a FIFO in
/// the way is an error, not a hang), and a file it creates has its name made durable before
/// the open returns.
///
/// ```
/// # fn main() -> maos_core::Result<()> {
/// use maos_core::fsx::DataFile;
/// let dir = tempfile::tempdir().unwrap();
/// let mut log = DataFile::open_append(&dir.path().join("log"))?;
/// let at = log.append(b"first record\n")?;
/// log.sync_data()?; // durable from here on
/// assert_eq!(at, 0);
/// assert_eq!(log.len()?, 13);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DataFile {
    file: File,
    path: PathBuf,
    append: bool,
}

impl DataFile {
    /// Opens `path` for reading and appending, creating it (mode 0600) if missing.
    pub fn open_append(path: &Path) -> Result<Self> {
        Ok(Self {
            file: super::open_append(path)?,
            path: path.to_path_buf(),
            append: true,
        })
    }

    /// Opens `path` for reading and positioned writing, creating it (mode 0600) if missing.
    pub fn open_rw(path: &Path) -> Result<Self> {
        Ok(Self {
            file: super::open_created(OpenOptions::new().read(true).write(true), "open", path)?,
            path: path.to_path_buf(),
            append: false,
        })
    }

    /// Opens an existing `path` for reading and positioned writing ([`Error::NotFound`] when
    /// it does not exist).
    pub fn open_existing_rw(path: &Path) -> Result<Self> {
        Ok(Self {
            file: super::open_regular(OpenOptions::new().read(true).write(true), "open", path)?,
            path: path.to_path_buf(),
            append: false,
        })
    }

    /// The path it was opened under.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for reading, `stat` and kernel locks. Do not write through it: writes
    /// that bypass `DataFile` are invisible to the power-cut simulator.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The current length in bytes.
    pub fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len())
    }

    /// True when the file is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Appends `buf` in one `write(2)` (`O_APPEND`) and returns the offset it was written at.
    /// Appends by several writers must be serialised by the caller (a kernel lock) for the
    /// returned offset to be meaningful.
    pub fn append(&mut self, buf: &[u8]) -> Result<u64> {
        if !self.append {
            return Err(Error::io(
                "append",
                &self.path,
                std::io::Error::other("file was not opened for appending"),
            ));
        }
        let path = self.path.clone();
        let file = &mut self.file;
        sim::with(
            &path,
            || {
                let at = file
                    .metadata()
                    .map_err(|e| Error::io("stat", &path, e))?
                    .len();
                file.write_all(buf)
                    .map_err(|e| Error::io("write", &path, e))?;
                Ok(at)
            },
            |st, at| st.write(&path, *at, buf),
        )
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        sim::with(
            &self.path,
            || {
                self.file
                    .write_all_at(buf, offset)
                    .map_err(|e| Error::io("write", &self.path, e))
            },
            |st, ()| st.write(&self.path, offset, buf),
        )
    }

    /// Truncates (or extends with zeros) to `len` bytes.
    pub fn set_len(&self, len: u64) -> Result<()> {
        sim::with(
            &self.path,
            || {
                self.file
                    .set_len(len)
                    .map_err(|e| Error::io("truncate", &self.path, e))
            },
            |st, ()| st.set_len(&self.path, len),
        )
    }

    /// `fdatasync`: the data written so far survives a power cut.
    pub fn sync_data(&self) -> Result<()> {
        sim::with(
            &self.path,
            || {
                self.file
                    .sync_data()
                    .map_err(|e| Error::io("fsync", &self.path, e))
            },
            |st, ()| st.sync(&self.path),
        )
    }

    /// `fsync`: data and metadata survive a power cut.
    pub fn sync_all(&self) -> Result<()> {
        sim::with(
            &self.path,
            || {
                self.file
                    .sync_all()
                    .map_err(|e| Error::io("fsync", &self.path, e))
            },
            |st, ()| st.sync(&self.path),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for r in [
            DataFile::open_append(&fifo).map(drop),
            DataFile::open_rw(&fifo).map(drop),
            crate::fsx::read_bounded(&fifo, 10).map(drop),
            crate::fsx::LockFile::open(&fifo).map(drop),
        ] {
            let err = r.unwrap_err();
            assert!(matches!(err, Error::NotRegularFile { .. }), "{err}");
            assert!(err.to_string().contains("FIFO"), "{err}");
        }
    }

    #[test]
    fn a_directory_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = crate::fsx::read_bounded(dir.path(), 10).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn positioned_writes_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let f = DataFile::open_rw(&dir.path().join("slots")).unwrap();
        f.write_at(b"abcdef", 0).unwrap();
        f.write_at(b"XY", 2).unwrap();
        f.set_len(4).unwrap();
        f.sync_all().unwrap();
        assert_eq!(std::fs::read(dir.path().join("slots")).unwrap(), b"abXY");
        let mut g = DataFile::open_existing_rw(&dir.path().join("slots")).unwrap();
        assert!(g.append(b"no").is_err());
    }
}
