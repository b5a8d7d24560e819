//! The byte layouts of the lock table's files (`index`, `cells`, `tokens`), exactly as
//! docs/protocol.md specifies them: every multi-byte integer is little-endian, every checksum
//! is CRC-32 (IEEE, zlib's `crc32`).

/// Size of one cell of `cells`.
pub(crate) const CELL: u64 = 512;
/// Bytes before the first bucket of `index` (the header lives at offset 0).
pub(crate) const BUCKETS_AT: u64 = 4096;
/// Size of one bucket of `index`.
pub(crate) const BUCKET: u64 = 32;
/// Size of the extent header at the start of every extent of `cells`.
pub(crate) const EXTENT_HEADER: usize = 32;
/// Size classes: an extent of class `c` spans `2^c` cells; class 15 is 16 MiB.
pub(crate) const CLASSES: usize = 16;
/// The fewest buckets an index has.
pub(crate) const MIN_BUCKETS: u64 = 1024;
/// Size of the header's encoded form.
pub(crate) const HEADER_LEN: usize = 160;
/// Offsets of the two slots of `tokens`.
pub(crate) const TOKEN_SLOTS: [u64; 2] = [0, 512];
/// Size of one slot of `tokens`.
pub(crate) const TOKEN_SLOT_LEN: usize = 32;

const HEADER_MAGIC: &[u8; 4] = b"MLK1";
const DOC_MAGIC: &[u8; 4] = b"MLC1";
const FREE_MAGIC: &[u8; 4] = b"MLF1";
const TOKEN_MAGIC: &[u8; 4] = b"MLT1";

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// FNV-1a, 64 bits: the first hash of a key.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The two hashes that identify a key in the index: FNV-1a 64 (never 0: 0 marks an empty
/// bucket, so 0 becomes 1) and CRC-32.
pub(crate) fn key_hashes(key: &str) -> (u64, u32) {
    let h1 = fnv1a(key.as_bytes()).max(1);
    (h1, crc32fast::hash(key.as_bytes()))
}

/// The home bucket of a key: the SplitMix64 finaliser of `h1`, masked to the bucket count.
pub(crate) fn home(h1: u64, buckets: u64) -> u64 {
    let mut z = h1;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z & (buckets - 1)
}

/// The smallest class whose extent holds `bytes` bytes (header included), if any.
pub(crate) fn class_for(bytes: usize) -> Option<u8> {
    let cells = (bytes as u64).div_ceil(CELL).max(1);
    let class = cells.next_power_of_two().trailing_zeros();
    (class < CLASSES as u32).then_some(class as u8)
}

/// Cells in an extent of `class`.
pub(crate) fn cells_of(class: u8) -> u64 {
    1u64 << class
}

/// The header of `index`: counters and allocator state. Everything but `next_id` and
/// `reserved` can be recomputed from `cells` (a rebuild).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Header {
    /// Committed changes so far; an extent written by a change carries `generation + 1`.
    pub(crate) generation: u64,
    /// 0, or the generation of a change in progress (its writer died if another process sees
    /// it: the guard is free).
    pub(crate) dirty: u64,
    /// The next ticket or fencing token to hand out.
    pub(crate) next_id: u64,
    /// Every id below or equal to this is covered by the durable reservation in `tokens`.
    pub(crate) reserved: u64,
    /// Number of buckets (a power of two).
    pub(crate) buckets: u64,
    /// Buckets in use, tombstones included.
    pub(crate) used: u64,
    /// Keys (plain resources) with a document.
    pub(crate) keys: u64,
    /// End of the allocated part of `cells`, in cells.
    pub(crate) cells: u64,
    /// The pattern document's first cell + 1 (0: none).
    pub(crate) pattern_doc: u32,
    /// Heads of the free lists, per class: first cell + 1 (0: empty).
    pub(crate) free: [u32; CLASSES],
    /// The boot id of the host when the header was written (16 bytes of the UUID).
    pub(crate) boot: [u8; 16],
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(HEADER_MAGIC);
        put_u64(&mut b, 8, self.generation);
        put_u64(&mut b, 16, self.dirty);
        put_u64(&mut b, 24, self.next_id);
        put_u64(&mut b, 32, self.reserved);
        put_u64(&mut b, 40, self.buckets);
        put_u64(&mut b, 48, self.used);
        put_u64(&mut b, 56, self.keys);
        put_u64(&mut b, 64, self.cells);
        put_u32(&mut b, 72, self.pattern_doc);
        for (i, f) in self.free.iter().enumerate() {
            put_u32(&mut b, 76 + 4 * i, *f);
        }
        b[140..156].copy_from_slice(&self.boot);
        let crc = crc32fast::hash(&b[8..HEADER_LEN]);
        put_u32(&mut b, 4, crc);
        b
    }

    /// `None` when the bytes are not a valid header (never written, torn or damaged).
    pub(crate) fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN || &b[0..4] != HEADER_MAGIC {
            return None;
        }
        if crc32fast::hash(&b[8..HEADER_LEN]) != u32_at(b, 4) {
            return None;
        }
        let mut free = [0u32; CLASSES];
        for (i, f) in free.iter_mut().enumerate() {
            *f = u32_at(b, 76 + 4 * i);
        }
        let mut boot = [0u8; 16];
        boot.copy_from_slice(&b[140..156]);
        let h = Header {
            generation: u64_at(b, 8),
            dirty: u64_at(b, 16),
            next_id: u64_at(b, 24),
            reserved: u64_at(b, 32),
            buckets: u64_at(b, 40),
            used: u64_at(b, 48),
            keys: u64_at(b, 56),
            cells: u64_at(b, 64),
            pattern_doc: u32_at(b, 72),
            free,
            boot,
        };
        // A bucket count that is not a power of two (or absurd) is damage, whatever the
        // checksum says.
        let sane = h.buckets.is_power_of_two()
            && h.buckets >= MIN_BUCKETS
            && h.buckets <= 1 << 28
            && h.used <= h.buckets
            && h.cells <= u64::from(u32::MAX);
        sane.then_some(h)
    }
}

/// The 16 bytes of a boot id UUID (`xxxxxxxx-xxxx-...`); zeros when it does not parse.
pub(crate) fn boot_bytes(boot_id: &str) -> [u8; 16] {
    let hex: Vec<u8> = boot_id.bytes().filter(|c| *c != b'-').collect();
    let mut out = [0u8; 16];
    if hex.len() != 32 {
        // Not a UUID (a test's stand-in): hash it into the 16 bytes instead.
        let a = fnv1a(boot_id.as_bytes()).to_le_bytes();
        let b = crc32fast::hash(boot_id.as_bytes()).to_le_bytes();
        out[..8].copy_from_slice(&a);
        out[8..12].copy_from_slice(&b);
        return out;
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).unwrap_or("00");
        out[i] = u8::from_str_radix(s, 16).unwrap_or(0);
    }
    out
}

/// One bucket of the index: a key (by its two hashes), its document and how many keys with a
/// document lie strictly below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Bucket {
    pub(crate) h1: u64,
    pub(crate) h2: u32,
    /// First cell + 1 of the key's document (0: none).
    pub(crate) doc: u32,
    /// Keys strictly below this one (`key/...`) that have a document.
    pub(crate) below: u32,
}

/// What a bucket's bytes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BucketRead {
    /// Never used (all zeros): a probe ends here.
    Empty,
    /// A key, or a tombstone (`doc == 0 && below == 0`).
    Used(Bucket),
    /// A checksum that does not match: damage (or a torn write of a writer that died).
    Bad,
}

impl Bucket {
    pub(crate) fn is_tombstone(&self) -> bool {
        self.doc == 0 && self.below == 0
    }

    pub(crate) fn encode(&self) -> [u8; BUCKET as usize] {
        let mut b = [0u8; BUCKET as usize];
        put_u64(&mut b, 0, self.h1);
        put_u32(&mut b, 8, self.h2);
        put_u32(&mut b, 12, self.doc);
        put_u32(&mut b, 16, self.below);
        let crc = crc32fast::hash(&b[0..28]);
        put_u32(&mut b, 28, crc);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> BucketRead {
        if b.iter().all(|&x| x == 0) {
            return BucketRead::Empty;
        }
        if crc32fast::hash(&b[0..28]) != u32_at(b, 28) || u64_at(b, 0) == 0 {
            return BucketRead::Bad;
        }
        BucketRead::Used(Bucket {
            h1: u64_at(b, 0),
            h2: u32_at(b, 8),
            doc: u32_at(b, 12),
            below: u32_at(b, 16),
        })
    }
}

/// The header of an extent of `cells`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExtentHead {
    /// A document: `key_len` bytes of key, then `body_len` bytes of JSON, written by the
    /// change with generation `written`. `crc` covers bytes 8.. of the header plus key and body.
    Doc {
        class: u8,
        key_len: u16,
        body_len: u32,
        written: u64,
        crc: u32,
    },
    /// A free extent on the free list of its class (`next`: the next one's first cell + 1).
    Free { class: u8, next: u32 },
    /// Anything else: never written, or not an extent start.
    Other,
    /// The magic of a document or free extent whose header does not check out (`written`:
    /// the generation a document header claims; `class`: its class, if plausible).
    Bad {
        written: Option<u64>,
        class: Option<u8>,
    },
}

/// Encodes a document extent (header, key, body), `class` large enough.
pub(crate) fn encode_doc(cell: u32, class: u8, written: u64, key: &str, body: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; EXTENT_HEADER + key.len() + body.len()];
    b[0..4].copy_from_slice(DOC_MAGIC);
    put_u32(&mut b, 8, cell);
    b[12] = class;
    b[14..16].copy_from_slice(&(key.len() as u16).to_le_bytes());
    put_u32(&mut b, 16, body.len() as u32);
    put_u64(&mut b, 24, written);
    b[EXTENT_HEADER..EXTENT_HEADER + key.len()].copy_from_slice(key.as_bytes());
    b[EXTENT_HEADER + key.len()..].copy_from_slice(body);
    let crc = crc32fast::hash(&b[8..]);
    put_u32(&mut b, 4, crc);
    b
}

/// Encodes the header of a free extent.
pub(crate) fn encode_free(cell: u32, class: u8, next: u32) -> [u8; EXTENT_HEADER] {
    let mut b = [0u8; EXTENT_HEADER];
    b[0..4].copy_from_slice(FREE_MAGIC);
    put_u32(&mut b, 8, cell);
    b[12] = class;
    put_u32(&mut b, 20, next);
    let crc = crc32fast::hash(&b[8..]);
    put_u32(&mut b, 4, crc);
    b
}

/// Decodes the header of the extent that starts at `cell` (`b`: at least its first 32 bytes).
pub(crate) fn decode_head(b: &[u8], cell: u32) -> ExtentHead {
    if b.len() < EXTENT_HEADER {
        return ExtentHead::Other;
    }
    let magic = &b[0..4];
    let class = b[12];
    let sane = u32_at(b, 8) == cell && (class as usize) < CLASSES;
    let plausible = ((class as usize) < CLASSES).then_some(class);
    if magic == FREE_MAGIC {
        if !sane || crc32fast::hash(&b[8..EXTENT_HEADER]) != u32_at(b, 4) {
            return ExtentHead::Bad {
                written: None,
                class: plausible,
            };
        }
        return ExtentHead::Free {
            class,
            next: u32_at(b, 20),
        };
    }
    if magic == DOC_MAGIC {
        let key_len = u16::from_le_bytes([b[14], b[15]]);
        let body_len = u32_at(b, 16);
        let written = u64_at(b, 24);
        let fits = (EXTENT_HEADER as u64 + u64::from(key_len) + u64::from(body_len))
            <= cells_of(class.min(CLASSES as u8 - 1)) * CELL;
        if !sane || !fits {
            return ExtentHead::Bad {
                written: Some(written),
                class: plausible,
            };
        }
        return ExtentHead::Doc {
            class,
            key_len,
            body_len,
            written,
            crc: u32_at(b, 4),
        };
    }
    ExtentHead::Other
}

/// Checks a whole document extent (`b` from its first byte, at least header + key + body).
pub(crate) fn doc_parts(b: &[u8], key_len: u16, body_len: u32, crc: u32) -> Option<(&str, &[u8])> {
    let end = EXTENT_HEADER + usize::from(key_len) + body_len as usize;
    if b.len() < end || crc32fast::hash(&b[8..end]) != crc {
        return None;
    }
    let key = std::str::from_utf8(&b[EXTENT_HEADER..EXTENT_HEADER + usize::from(key_len)]).ok()?;
    Some((key, &b[EXTENT_HEADER + usize::from(key_len)..end]))
}

/// One slot of `tokens`: the durable reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenSlot {
    /// Write counter of the slots (the newer slot has the larger one).
    pub(crate) generation: u64,
    /// No id above this has been handed out.
    pub(crate) reserved: u64,
}

impl TokenSlot {
    pub(crate) fn encode(&self) -> [u8; TOKEN_SLOT_LEN] {
        let mut b = [0u8; TOKEN_SLOT_LEN];
        b[0..4].copy_from_slice(TOKEN_MAGIC);
        put_u64(&mut b, 8, self.generation);
        put_u64(&mut b, 16, self.reserved);
        let crc = crc32fast::hash(&b[8..]);
        put_u32(&mut b, 4, crc);
        b
    }

    /// `Ok(None)`: never written (zeros or missing); `Err(())`: damaged or torn.
    pub(crate) fn decode(b: &[u8]) -> Result<Option<TokenSlot>, ()> {
        if b.len() < TOKEN_SLOT_LEN || b[..TOKEN_SLOT_LEN].iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if &b[0..4] != TOKEN_MAGIC || crc32fast::hash(&b[8..TOKEN_SLOT_LEN]) != u32_at(b, 4) {
            return Err(());
        }
        Ok(Some(TokenSlot {
            generation: u64_at(b, 8),
            reserved: u64_at(b, 16),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_and_reject_damage() {
        let h = Header {
            generation: 7,
            dirty: 0,
            next_id: 42,
            reserved: 1 << 20,
            buckets: 1024,
            used: 3,
            keys: 2,
            cells: 9,
            pattern_doc: 4,
            free: [1; CLASSES],
            boot: [9; 16],
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b), Some(h));
        for i in 0..HEADER_LEN {
            let mut d = b;
            d[i] ^= 0x20;
            assert_eq!(Header::decode(&d), None, "flip at {i}");
        }
        let k = Bucket {
            h1: 5,
            h2: 6,
            doc: 7,
            below: 0,
        };
        assert_eq!(Bucket::decode(&k.encode()), BucketRead::Used(k));
        assert_eq!(Bucket::decode(&[0u8; 32]), BucketRead::Empty);
        let mut bad = k.encode();
        bad[13] ^= 1;
        assert_eq!(Bucket::decode(&bad), BucketRead::Bad);
        let doc = encode_doc(3, 0, 11, "src/a.rs", b"{}");
        match decode_head(&doc, 3) {
            ExtentHead::Doc {
                key_len,
                body_len,
                written,
                crc,
                ..
            } => {
                assert_eq!(written, 11);
                assert_eq!(
                    doc_parts(&doc, key_len, body_len, crc),
                    Some(("src/a.rs", &b"{}"[..]))
                );
                let mut d = doc.clone();
                let n = d.len();
                d[n - 1] ^= 1;
                assert_eq!(doc_parts(&d, key_len, body_len, crc), None);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(decode_head(&doc, 4), ExtentHead::Bad { .. }),
            "a misplaced copy"
        );
        assert!(matches!(
            decode_head(&encode_free(2, 1, 9), 2),
            ExtentHead::Free { class: 1, next: 9 }
        ));
        assert_eq!(class_for(1), Some(0));
        assert_eq!(class_for(512), Some(0));
        assert_eq!(class_for(513), Some(1));
        assert_eq!(class_for(16 << 20), Some(15));
        assert_eq!(class_for((16 << 20) + 1), None);
        let t = TokenSlot {
            generation: 2,
            reserved: 99,
        };
        assert_eq!(TokenSlot::decode(&t.encode()), Ok(Some(t)));
        assert_eq!(TokenSlot::decode(&[0u8; 32]), Ok(None));
        let mut bt = t.encode();
        bt[17] ^= 4;
        assert_eq!(TokenSlot::decode(&bt), Err(()));
    }
}
