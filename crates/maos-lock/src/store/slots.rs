//! A small JSON document kept in two checksummed slots written alternately in place (the
//! advisory interests: `advisory.0`, `advisory.1`). Each slot is `<crc32 hex> <length>\n`
//! followed by the JSON body (which carries a `generation`); a reader takes the valid slot
//! with the higher generation. A writer killed mid-write leaves a slot whose checksum fails
//! and the other slot holds the state before its change. Written under the table's guard,
//! through [`DataFile`] (so the power-cut simulator sees every write), never fsynced: what
//! it holds lives only as long as the processes that registered it.

use std::path::{Path, PathBuf};

use maos_core::fsx::DataFile;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::table::read_at;
use crate::{Error, Result};

/// Largest slot a reader accepts.
const SLOT_LIMIT: u64 = 64 << 20;

/// Two slots of one document.
#[derive(Debug)]
pub(crate) struct TwoSlots {
    paths: [PathBuf; 2],
    files: [DataFile; 2],
}

#[derive(serde::Deserialize)]
struct Generation {
    #[serde(default)]
    generation: u64,
}

#[derive(Serialize)]
struct WithGeneration<'a, T> {
    generation: u64,
    #[serde(flatten)]
    value: &'a T,
}

/// Parses one slot; `None` when empty or torn (checksum fails).
fn parse_slot(bytes: &[u8]) -> Option<&[u8]> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..nl]).ok()?;
    let (crc, len) = head.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    let len: usize = len.parse().ok()?;
    let body = bytes.get(nl + 1..(nl + 1).checked_add(len)?)?;
    (crc32fast::hash(body) == crc).then_some(body)
}

impl TwoSlots {
    pub(crate) fn open(dir: &Path, base: &str) -> Result<Self> {
        let paths = [dir.join(format!("{base}.0")), dir.join(format!("{base}.1"))];
        Ok(Self {
            files: [DataFile::open_rw(&paths[0])?, DataFile::open_rw(&paths[1])?],
            paths,
        })
    }

    /// The document and its generation (`T::default()` and 0 when never written).
    pub(crate) fn load<T: DeserializeOwned + Default>(&self) -> Result<(T, u64)> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        let mut torn = 0;
        for f in &self.files {
            let len = f.len()?;
            if len > SLOT_LIMIT {
                return Err(Error::Corrupt {
                    path: f.path().to_path_buf(),
                    reason: format!(
                        "it is {len} bytes, more than the {SLOT_LIMIT} a slot may hold"
                    ),
                });
            }
            if len == 0 {
                continue;
            }
            let mut buf = vec![0u8; len as usize];
            read_at(f, &mut buf, 0)?;
            match parse_slot(&buf) {
                Some(body) => {
                    let g = serde_json::from_slice::<Generation>(body)
                        .map(|g| g.generation)
                        .unwrap_or(0);
                    if best.as_ref().is_none_or(|(bg, _)| g > *bg) {
                        best = Some((g, body.to_vec()));
                    }
                }
                None => torn += 1,
            }
        }
        match best {
            Some((g, body)) => {
                let v = serde_json::from_slice(&body).map_err(|e| Error::Corrupt {
                    path: self.paths[(g % 2) as usize].clone(),
                    reason: format!("a complete slot does not parse: {e}"),
                })?;
                Ok((v, g))
            }
            None if torn == 2 => Err(Error::Corrupt {
                path: self.paths[0].clone(),
                reason: format!(
                    "both slots ({} and {}) fail their checksum: the advisory interests are lost; \
                     interests are re-registered by their processes, so removing both files is safe once no agent waits for a turn",
                    self.paths[0].display(),
                    self.paths[1].display()
                ),
            }),
            None => Ok((T::default(), 0)),
        }
    }

    /// Writes `value` as generation `generation` (the loaded one + 1).
    pub(crate) fn save<T: Serialize>(&self, value: &T, generation: u64) -> Result<()> {
        let slot = (generation % 2) as usize;
        let body = serde_json::to_vec(&WithGeneration { generation, value }).map_err(|e| {
            Error::Corrupt {
                path: self.paths[slot].clone(),
                reason: format!("cannot encode: {e}"),
            }
        })?;
        if body.len() as u64 + 32 > SLOT_LIMIT {
            return Err(Error::TooLarge {
                resource: self.paths[slot].display().to_string(),
                what: "advisory interests",
                size: body.len() as u64,
                limit: SLOT_LIMIT,
            });
        }
        let mut bytes = format!("{:08x} {}\n", crc32fast::hash(&body), body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        bytes.push(b'\n');
        let f = &self.files[slot];
        f.write_at(&bytes, 0)?;
        f.set_len(bytes.len() as u64)?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[PathBuf; 2] {
        &self.paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_slots_fall_back_and_two_torn_slots_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        let s = TwoSlots::open(d.path(), "doc").unwrap();
        let (v, g): (serde_json::Value, u64) = s.load().unwrap();
        assert_eq!((v, g), (serde_json::Value::Null, 0));
        s.save(&serde_json::json!({"a": 1}), 1).unwrap();
        s.save(&serde_json::json!({"a": 2}), 2).unwrap();
        let (v, g): (serde_json::Value, u64) = s.load().unwrap();
        assert_eq!((v["a"].as_u64(), g), (Some(2), 2));
        // Tear the newer slot: the older state comes back.
        let p = &s.paths()[0];
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() / 2]).unwrap();
        let (v, g): (serde_json::Value, u64) = s.load().unwrap();
        assert_eq!((v["a"].as_u64(), g), (Some(1), 1));
        let p1 = &s.paths()[1];
        let b = std::fs::read(p1).unwrap();
        std::fs::write(p1, &b[..b.len() / 2]).unwrap();
        let err = s.load::<serde_json::Value>().unwrap_err();
        assert!(err.to_string().contains("both slots"), "{err}");
    }
}
