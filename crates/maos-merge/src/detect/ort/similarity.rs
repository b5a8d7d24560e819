//! git's content similarity estimate (`diffcore-delta.c`): a file is cut into spans that end
//! at a newline or after 64 bytes, each span hashed; the similarity of a pair is how many
//! bytes of the destination's spans also occur in the source, divided by the larger size.

use std::collections::HashMap;

/// git's `MAX_SCORE`: similarity scores are fractions of this.
pub(crate) const MAX_SCORE: u64 = 60_000;
const HASHBASE: u32 = 107_927;
/// git looks for a NUL byte in this many leading bytes to call a blob binary.
const FIRST_FEW_BYTES: usize = 8000;

/// `buffer_is_binary`: a NUL byte in the first 8000 bytes.
pub(crate) fn is_binary(data: &[u8]) -> bool {
    data[..data.len().min(FIRST_FEW_BYTES)].contains(&0)
}

/// The span hashes of one blob, sorted by hash, with the byte count of each.
#[derive(Debug)]
pub(crate) struct Signature {
    spans: Vec<(u32, u32)>,
}

impl Signature {
    /// `hash_chars`: for text, a CR directly before an LF is skipped.
    pub(crate) fn of(data: &[u8]) -> Self {
        let is_text = !is_binary(data);
        let mut counts: HashMap<u32, u32> = HashMap::new();
        let (mut accum1, mut accum2, mut n) = (0u32, 0u32, 0u32);
        let mut i = 0;
        while i < data.len() {
            let c = u32::from(data[i]);
            i += 1;
            if is_text && c == u32::from(b'\r') && data.get(i) == Some(&b'\n') {
                continue;
            }
            let old_1 = accum1;
            accum1 = (accum1 << 7) ^ (accum2 >> 25);
            accum2 = (accum2 << 7) ^ (old_1 >> 25);
            accum1 = accum1.wrapping_add(c);
            n += 1;
            if n < 64 && c != u32::from(b'\n') {
                continue;
            }
            let h = accum1.wrapping_add(accum2.wrapping_mul(0x61)) % HASHBASE;
            *counts.entry(h).or_default() += n;
            n = 0;
            accum1 = 0;
            accum2 = 0;
        }
        if n > 0 {
            let h = accum1.wrapping_add(accum2.wrapping_mul(0x61)) % HASHBASE;
            *counts.entry(h).or_default() += n;
        }
        let mut spans: Vec<(u32, u32)> = counts.into_iter().collect();
        spans.sort_unstable();
        Self { spans }
    }

    /// `diffcore_count_changes`: the bytes of `dst` that also occur in `self` (the source).
    pub(crate) fn copied_into(&self, dst: &Signature) -> u64 {
        let (mut i, mut j, mut copied) = (0, 0, 0u64);
        while i < self.spans.len() && j < dst.spans.len() {
            let (sh, sc) = self.spans[i];
            let (dh, dc) = dst.spans[j];
            match sh.cmp(&dh) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    copied += u64::from(sc.min(dc));
                    i += 1;
                    j += 1;
                }
            }
        }
        copied
    }
}

/// git's size pre-check of `estimate_similarity`: pairs whose sizes differ too much for
/// `minimum_score` are never compared.
pub(crate) fn sizes_may_match(src: u64, dst: u64, minimum_score: u64) -> bool {
    let max = src.max(dst);
    let delta = max - src.min(dst);
    max * (MAX_SCORE - minimum_score) >= delta * MAX_SCORE
}

/// `estimate_similarity` of two regular files, on git's scale (0..=[`MAX_SCORE`]).
pub(crate) fn score(src: (&Signature, u64), dst: (&Signature, u64), minimum_score: u64) -> u64 {
    let (ss, src_size) = src;
    let (ds, dst_size) = dst;
    if !sizes_may_match(src_size, dst_size, minimum_score) {
        return 0;
    }
    let max = src_size.max(dst_size);
    if dst_size == 0 || max == 0 {
        return 0;
    }
    ss.copied_into(ds) * MAX_SCORE / max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(a: &[u8], b: &[u8]) -> u64 {
        let (sa, sb) = (Signature::of(a), Signature::of(b));
        score((&sa, a.len() as u64), (&sb, b.len() as u64), 0) * 100 / MAX_SCORE
    }

    #[test]
    fn identical_files_score_full_and_disjoint_ones_zero() {
        let a = b"one\ntwo\nthree\nfour\n";
        assert_eq!(sim(a, a), 100);
        assert_eq!(sim(a, b"five\nsix\nseven\neight\n"), 0);
    }

    #[test]
    fn one_line_of_four_changed_keeps_the_other_three_quarters() {
        // "two\n" -> "TWO\n": 15 of 19 bytes are shared.
        let s = sim(b"one\ntwo\nthree\nfour\n", b"one\nTWO\nthree\nfour\n");
        assert_eq!(s, 15 * 100 / 19);
    }

    #[test]
    fn crlf_counts_like_lf_in_text_but_not_in_binary() {
        assert_eq!(sim(b"a\nb\n", b"a\r\nb\r\n"), 4 * 100 / 6);
        assert!(is_binary(b"a\0b"));
        assert!(!is_binary(b"plain text\n"));
    }

    #[test]
    fn sizes_too_far_apart_are_not_compared() {
        // 50% threshold: a 100-byte file never matches one of 201 bytes or more.
        let min = MAX_SCORE / 2;
        assert!(sizes_may_match(100, 200, min));
        assert!(!sizes_may_match(100, 201, min));
    }
}
