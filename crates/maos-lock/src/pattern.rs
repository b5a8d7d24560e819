//! When two resource names can name the same file.
//!
//! A resource is a workspace-relative path or a glob pattern over paths: `*` (any characters
//! inside one segment), `?` (one character), `[...]` (a character class) and `**` (any number
//! of whole segments, including none). A plain name also covers everything below it: a lock on
//! `src` conflicts with one on `src/main.rs`. Two resources *overlap* when some path is
//! covered by both; locks on overlapping resources conflict (unless both are shared).
//!
//! The check is exact for `*`, `?` and `**`; two character classes are assumed to share a
//! character (a false "overlap" only makes a lock wait, never lets two holders in).

use maos_core::ResourceName;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ch {
    Lit(char),
    Any,
    Class,
    Star,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Glob(Vec<Ch>),
    DoubleStar,
}

fn parse_seg(s: &str) -> Seg {
    if s == "**" {
        return Seg::DoubleStar;
    }
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                // `a**b` inside a segment is the same as `a*b`.
                if out.last() != Some(&Ch::Star) {
                    out.push(Ch::Star);
                }
            }
            '?' => out.push(Ch::Any),
            '[' => {
                // A class runs to the next `]` (a `]` right after `[` or `[!` belongs to it);
                // an unterminated `[` is a literal.
                let rest: String = chars.clone().collect();
                let skip = usize::from(rest.starts_with('!') || rest.starts_with('^'));
                match rest[skip..].char_indices().skip(1).find(|&(_, c)| c == ']') {
                    Some((i, _)) => {
                        let n = rest[..skip + i + 1].chars().count();
                        for _ in 0..n {
                            chars.next();
                        }
                        out.push(Ch::Class);
                    }
                    None => out.push(Ch::Lit('[')),
                }
            }
            c => out.push(Ch::Lit(c)),
        }
    }
    Seg::Glob(out)
}

fn segments(r: &ResourceName) -> Vec<Seg> {
    let mut v: Vec<Seg> = r.segments().map(parse_seg).collect();
    // Everything below a covered path is covered too.
    if v.last() != Some(&Seg::DoubleStar) {
        v.push(Seg::DoubleStar);
    }
    v
}

fn ch_compatible(a: &Ch, b: &Ch) -> bool {
    match (a, b) {
        (Ch::Lit(x), Ch::Lit(y)) => x == y,
        _ => true,
    }
}

/// True when some sequence is produced by both `a` and `b`, where an element for which
/// `is_star` holds produces any run of items (`*` within a segment, `**` over segments) and two
/// other elements can produce the same item when `compatible` says so.
fn intersect<T>(
    a: &[T],
    b: &[T],
    is_star: impl Fn(&T) -> bool,
    compatible: impl Fn(&T, &T) -> bool,
) -> bool {
    // reach[i][j]: a[..i] and b[..j] can produce the same sequence.
    let (n, m) = (a.len(), b.len());
    let mut reach = vec![vec![false; m + 1]; n + 1];
    reach[0][0] = true;
    for i in 0..=n {
        for j in 0..=m {
            if !reach[i][j] {
                continue;
            }
            let a_star = i < n && is_star(&a[i]);
            let b_star = j < m && is_star(&b[j]);
            if a_star {
                reach[i + 1][j] = true; // the star produces nothing more
                if j < m {
                    reach[i][j + 1] = true; // the star absorbs whatever b[j] produces
                }
            }
            if b_star {
                reach[i][j + 1] = true;
                if i < n {
                    reach[i + 1][j] = true;
                }
            }
            if i < n && j < m && !a_star && !b_star && compatible(&a[i], &b[j]) {
                reach[i + 1][j + 1] = true;
            }
        }
    }
    reach[n][m]
}

/// True when some string matches both segment globs.
fn globs_intersect(a: &[Ch], b: &[Ch]) -> bool {
    intersect(a, b, |c| *c == Ch::Star, ch_compatible)
}

fn seg_compatible(a: &Seg, b: &Seg) -> bool {
    match (a, b) {
        (Seg::Glob(x), Seg::Glob(y)) => globs_intersect(x, y),
        _ => true,
    }
}

fn seqs_intersect(a: &[Seg], b: &[Seg]) -> bool {
    intersect(a, b, |s| *s == Seg::DoubleStar, seg_compatible)
}

/// True when some path is covered by both resources (see the module docs).
///
/// ```
/// use maos_core::ResourceName;
/// use maos_lock::overlaps;
/// let r = |s| ResourceName::new(s).unwrap();
/// assert!(overlaps(&r("src/api/**"), &r("src/api/user.rs")));
/// assert!(overlaps(&r("src"), &r("src/main.rs")));
/// assert!(!overlaps(&r("src/*.rs"), &r("src/api/user.rs")));
/// assert!(!overlaps(&r("docs/a.md"), &r("docs/b.md")));
/// ```
pub fn overlaps(a: &ResourceName, b: &ResourceName) -> bool {
    if a == b {
        return true;
    }
    if !a.is_pattern() && !b.is_pattern() {
        // Plain paths: equal, or one is an ancestor of the other.
        let (x, y) = (a.as_str(), b.as_str());
        let under = |long: &str, short: &str| {
            long.len() > short.len()
                && long.starts_with(short)
                && long.as_bytes()[short.len()] == b'/'
        };
        return under(x, y) || under(y, x);
    }
    seqs_intersect(&segments(a), &segments(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ResourceName {
        ResourceName::new(s).unwrap()
    }

    #[test]
    fn overlap_table() {
        let cases = [
            ("src/api/**", "src/api/user.rs", true),
            ("src/api/**", "src/api", true),
            ("src/api/**", "src/apix/user.rs", false),
            ("src/**/*.rs", "src/a/b/c.rs", true),
            ("src/**/*.rs", "src/a/b/c.md", true), // src/a/b/c.md/x.rs could exist
            ("src/*.rs", "src/a.md", false),
            ("src/*.rs", "src/api/user.rs", false),
            ("src/*.rs", "src/*.md", false),
            ("src/a*", "src/*b", true),
            ("src/a?c", "src/abd", false),
            ("src/[ab].rs", "src/a.rs", true),
            ("src/[ab].rs", "src/a.md", false),
            ("src", "src/main.rs", true),
            ("src/main.rs", "src", true),
            ("src/main.rs", "src/main.rsx", false),
            ("a/b", "a/c", false),
            ("**", "anything/at/all", true),
            ("docs/*", "src/*", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlaps(&r(a), &r(b)), want, "{a} vs {b}");
            assert_eq!(overlaps(&r(b), &r(a)), want, "{b} vs {a} (symmetry)");
        }
    }

    #[test]
    fn unterminated_class_is_literal() {
        assert!(overlaps(&r("a/[x"), &r("a/[x")));
        assert!(!overlaps(&r("a/[x"), &r("a/x")));
    }
}
