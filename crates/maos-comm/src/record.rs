//! The record format of a channel segment: one JSON object per line,
//!
//! ```text
//! {"seq":<position>,"len":<n>,"crc":"<crc32 of msg, 8 lower-case hex>","msg":<n bytes: the message JSON>}\n
//! ```
//!
//! The header fields come first and in this order, so a reader finds the message bytes without
//! parsing them, and a torn or damaged record is told from a good one by its length and
//! checksum.

/// Bytes of a record besides the message: the header with two 20-digit numbers, plus `}\n`.
pub(crate) const MAX_OVERHEAD: usize = 80;

const P_SEQ: &[u8] = b"{\"seq\":";
const P_LEN: &[u8] = b",\"len\":";
const P_CRC: &[u8] = b",\"crc\":\"";
const P_MSG: &[u8] = b"\",\"msg\":";

/// Appends the record for message `msg` at position `seq` to `out`.
pub(crate) fn encode(seq: u64, msg: &[u8], out: &mut Vec<u8>) {
    let crc = crc32fast::hash(msg);
    out.reserve(msg.len() + MAX_OVERHEAD);
    out.extend_from_slice(P_SEQ);
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(P_LEN);
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.extend_from_slice(P_CRC);
    out.extend_from_slice(format!("{crc:08x}").as_bytes());
    out.extend_from_slice(P_MSG);
    out.extend_from_slice(msg);
    out.extend_from_slice(b"}\n");
}

/// `json` (valid JSON) without the whitespace between its tokens: what goes into a record
/// must be one line, and a pre-serialised payload (a `RawValue`) may hold line breaks between
/// tokens. Strings, numbers and everything else are copied byte for byte.
pub(crate) fn strip_whitespace(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    out
}

/// A record that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub(crate) seq: u64,
    pub(crate) msg: &'a [u8],
}

fn take_prefix<'a>(s: &'a [u8], p: &[u8]) -> Result<&'a [u8], String> {
    s.strip_prefix(p)
        .ok_or_else(|| format!("expected {:?}", String::from_utf8_lossy(p)))
}

fn take_u64(s: &[u8]) -> Result<(u64, &[u8]), String> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 || (n > 1 && s[0] == b'0') {
        return Err("expected a decimal number".into());
    }
    let v = std::str::from_utf8(&s[..n])
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| "number out of range".to_string())?;
    Ok((v, &s[n..]))
}

/// Checks one line (without its `\n`) and returns its position and message bytes.
pub(crate) fn parse(line: &[u8]) -> Result<Parsed<'_>, String> {
    let s = take_prefix(line, P_SEQ)?;
    let (seq, s) = take_u64(s)?;
    let s = take_prefix(s, P_LEN)?;
    let (len, s) = take_u64(s)?;
    let s = take_prefix(s, P_CRC)?;
    if s.len() < 8 {
        return Err("truncated checksum".into());
    }
    let crc = std::str::from_utf8(&s[..8])
        .ok()
        .filter(|t| t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| "checksum is not 8 lower-case hex digits".to_string())?;
    let s = take_prefix(&s[8..], P_MSG)?;
    let len = usize::try_from(len).map_err(|_| "length out of range".to_string())?;
    if s.len() != len + 1 || s[len] != b'}' {
        return Err(format!(
            "length field says {len} message bytes, the line holds {}",
            s.len().saturating_sub(1)
        ));
    }
    let msg = &s[..len];
    let actual = crc32fast::hash(msg);
    if actual != crc {
        return Err(format!(
            "checksum mismatch: header {crc:08x}, message {actual:08x}"
        ));
    }
    if seq == 0 {
        return Err("position 0 is not a valid position".into());
    }
    Ok(Parsed { seq, msg })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_is_one_json_line() {
        let mut out = Vec::new();
        encode(7, br#"{"a":1}"#, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["msg"]["a"], 1);
        let p = parse(&out[..out.len() - 1]).unwrap();
        assert_eq!(p.seq, 7);
        assert_eq!(p.msg, br#"{"a":1}"#);
    }

    #[test]
    fn damaged_records_are_refused() {
        let mut out = Vec::new();
        encode(3, br#"{"text":"hello"}"#, &mut out);
        let line = &out[..out.len() - 1];
        // Every strict prefix (a torn write) is refused.
        for n in 0..line.len() {
            assert!(parse(&line[..n]).is_err(), "prefix {n}");
        }
        // Every single-byte change in the message is caught by the checksum or the framing.
        for i in 0..line.len() {
            let mut bad = line.to_vec();
            bad[i] ^= 0x01;
            if let Ok(p) = parse(&bad) {
                // Only a change in the seq digits can still parse; then the position differs.
                assert_ne!(p.seq, 3, "byte {i}");
            }
        }
        assert!(parse(b"").is_err());
        assert!(parse(b"{\"seq\":0,\"len\":2,\"crc\":\"00000000\",\"msg\":{}}").is_err());
    }

    #[test]
    fn whitespace_between_tokens_goes_and_strings_stay() {
        let pretty = b"{\n  \"a\": [1, 2.50e3 ,\n 123456789012345678901234567890],\n  \"s\": \"x \\\" \\n y\"\r\n}";
        let flat = strip_whitespace(pretty);
        assert_eq!(
            std::str::from_utf8(&flat).unwrap(),
            r#"{"a":[1,2.50e3,123456789012345678901234567890],"s":"x \" \n y"}"#
        );
        assert!(!flat.contains(&b'\n'));
    }

    proptest! {
        #[test]
        fn records_round_trip(seq in 1u64.., text in any::<String>()) {
            let msg = serde_json::to_vec(&serde_json::json!({ "t": text })).unwrap();
            let mut out = Vec::new();
            encode(seq, &msg, &mut out);
            prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            prop_assert!(out.len() <= msg.len() + MAX_OVERHEAD);
            let p = parse(&out[..out.len() - 1]).unwrap();
            prop_assert_eq!(p.seq, seq);
            prop_assert_eq!(p.msg, &msg[..]);
        }
    }
}
