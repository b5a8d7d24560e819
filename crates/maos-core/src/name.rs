//! Validated names. Every name that becomes part of a path under `.maos/` is one of these,
//! so no caller can smuggle `..`, an absolute path or a control character into the layout.

use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// Longest plain name (agent, role, consumer, segment of a channel name), in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Most segments in a channel name.
pub const MAX_CHANNEL_SEGMENTS: usize = 8;
/// Longest resource name, in bytes.
pub const MAX_RESOURCE_LEN: usize = 1024;
/// Longest segment of a resource name, in bytes.
pub const MAX_RESOURCE_SEGMENT_LEN: usize = 255;

fn invalid(kind: &'static str, name: &str, reason: impl Into<String>) -> Error {
    Error::InvalidName {
        kind,
        name: name.escape_debug().to_string(),
        reason: reason.into(),
    }
}

/// Checks the rules of a plain name: 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ - @ +`,
/// not starting with `.` or `-`.
pub(crate) fn check_plain(kind: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(kind, name, "it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            kind,
            name,
            format!(
                "it is {} bytes long, the limit is {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+')))
    {
        return Err(invalid(
            kind,
            name,
            format!(
                "character {:?} is not allowed (use letters, digits, '.', '_', '-', '@', '+')",
                c
            ),
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(invalid(kind, name, "it must not start with '.' or '-'"));
    }
    Ok(())
}

/// Display (padded), Debug, FromStr and serde as a string for a validated name type with a
/// `new` constructor.
macro_rules! display_serde {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}
macro_rules! plain_name {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name` and wraps it.
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                check_plain($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name as a single path component.
            pub fn as_path(&self) -> &Path {
                Path::new(&self.0)
            }
        }

        display_serde!($ty);

        impl TryFrom<&str> for $ty {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

plain_name!(
    /// A plain name for anything that is not an agent or a role: consumers, groups, queues.
    ///
    /// 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ - @ +`, not starting with `.` or `-`.
    ///
    /// ```
    /// use maos_core::Name;
    /// assert!(Name::new("reviewer-2").is_ok());
    /// assert!(Name::new("../x").is_err());
    /// ```
    Name,
    "plain"
);

plain_name!(
    /// Who an agent is. An agent is a name, not a process: one agent may run many short
    /// CLI processes. Same rules as [`Name`].
    ///
    /// ```
    /// use maos_core::AgentId;
    /// let a = AgentId::new("backend-1").unwrap();
    /// assert_eq!(a.as_str(), "backend-1");
    /// ```
    AgentId,
    "agent"
);

plain_name!(
    /// What an agent does (`architect`, `backend`, ...). Messages can be addressed to a role;
    /// the agent registry says which agents hold it. Same rules as [`Name`].
    AgentRole,
    "role"
);

/// Environment variable that names the current agent.
pub const AGENT_ENV: &str = "MAOS_AGENT_ID";

impl AgentId {
    /// The agent id used when `MAOS_AGENT_ID` is not set: `anonymous`.
    pub const DEFAULT: &'static str = "anonymous";

    /// The current agent: `MAOS_AGENT_ID` if set (and valid), else [`AgentId::DEFAULT`].
    ///
    /// # Errors
    /// When `MAOS_AGENT_ID` is set but is not a valid agent name.
    pub fn current() -> Result<Self> {
        match std::env::var(AGENT_ENV) {
            Ok(v) if !v.is_empty() => Self::new(v),
            _ => Ok(Self(Self::DEFAULT.to_owned())),
        }
    }
}

impl AgentRole {
    /// Role `architect`.
    pub fn architect() -> Self {
        Self("architect".into())
    }
    /// Role `backend`.
    pub fn backend() -> Self {
        Self("backend".into())
    }
    /// Role `frontend`.
    pub fn frontend() -> Self {
        Self("frontend".into())
    }
    /// Role `reviewer`.
    pub fn reviewer() -> Self {
        Self("reviewer".into())
    }
    /// Role `orchestrator`.
    pub fn orchestrator() -> Self {
        Self("orchestrator".into())
    }
}

/// The name of a message channel or broadcast topic: 1 to [`MAX_CHANNEL_SEGMENTS`]
/// slash-separated segments, each a valid [`Name`], at most [`MAX_CHANNEL_LEN`] bytes.
///
/// ```
/// use maos_core::ChannelName;
/// let c = ChannelName::new("broadcast/global").unwrap();
/// assert_eq!(c.segments().collect::<Vec<_>>(), ["broadcast", "global"]);
/// assert!(ChannelName::new("a//b").is_err());
/// assert!(ChannelName::new("a/../../b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelName(String);

impl ChannelName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        const KIND: &str = "channel";
        if name.is_empty() {
            return Err(invalid(KIND, &name, "it is empty"));
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(invalid(
                KIND,
                &name,
                format!(
                    "it is {} bytes long, the limit is {MAX_CHANNEL_LEN}",
                    name.len()
                ),
            ));
        }
        let mut n = 0;
        for seg in name.split('/') {
            n += 1;
            if seg.is_empty() {
                return Err(invalid(KIND, &name, "it has an empty segment"));
            }
            if seg == ".." || seg == "." {
                return Err(invalid(
                    KIND,
                    &name,
                    "'.' and '..' segments are not allowed",
                ));
            }
            check_plain(KIND, seg).map_err(|e| match e {
                Error::InvalidName { reason, .. } => {
                    invalid(KIND, &name, format!("segment {seg:?}: {reason}"))
                }
                other => other,
            })?;
        }
        if n > MAX_CHANNEL_SEGMENTS {
            return Err(invalid(
                KIND,
                &name,
                format!("it has {n} segments, the limit is {MAX_CHANNEL_SEGMENTS}"),
            ));
        }
        Ok(Self(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a relative path (one directory per segment).
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The slash-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// `self` followed by `/` and `child`.
    pub fn join(&self, child: &str) -> Result<Self> {
        Self::new(format!("{}/{}", self.0, child))
    }
}

/// A workspace-relative path naming a file or resource, such as `src/api/user.rs`, or a
/// pattern such as `src/api/**`.
///
/// Normalised: a leading `./`, `.` segments and one trailing `/` are removed. Rejected: empty
/// names and segments (`a//b`), `..` anywhere, absolute paths (use [`ResourceName::in_workspace`]
/// to make an absolute path inside the workspace relative), NUL, control characters and `\`,
/// segments over [`MAX_RESOURCE_SEGMENT_LEN`] bytes and names over [`MAX_RESOURCE_LEN`] bytes.
///
/// ```
/// use maos_core::ResourceName;
/// assert_eq!(ResourceName::new("./src/api/user.rs").unwrap().as_str(), "src/api/user.rs");
/// assert!(ResourceName::new("../etc/passwd").is_err());
/// assert!(ResourceName::new("/etc/x").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceName(String);

impl ResourceName {
    const KIND: &'static str = "resource";

    /// Validates and normalises a relative resource name.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let raw = name.as_ref();
        if raw.starts_with('/') {
            return Err(invalid(
                Self::KIND,
                raw,
                "absolute paths are not resource names (give a path relative to the workspace)",
            ));
        }
        Self::normalise(raw, raw)
    }

    /// Like [`ResourceName::new`], but an absolute path is accepted when it lies inside
    /// `workspace_root`, and made relative to it. Anything outside is rejected with
    /// [`Error::OutsideWorkspace`].
    pub fn in_workspace(workspace_root: &Path, name: impl AsRef<str>) -> Result<Self> {
        let raw = name.as_ref();
        if !raw.starts_with('/') {
            return Self::new(raw);
        }
        let outside = || Error::OutsideWorkspace {
            path: raw.into(),
            workspace: workspace_root.to_path_buf(),
        };
        if raw.split('/').any(|s| s == "..") {
            return Err(outside());
        }
        let path = Path::new(raw);
        let rel = match path.strip_prefix(workspace_root) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => {
                // The root may be spelled differently (symlinked temp dirs): compare canonical
                // forms of the root and of the longest existing ancestor of the path.
                let root = std::fs::canonicalize(workspace_root)
                    .map_err(|e| Error::io("canonicalize", workspace_root, e))?;
                let mut existing = path;
                let mut rest = Vec::new();
                while !existing.exists() {
                    match (existing.parent(), existing.file_name()) {
                        (Some(p), Some(f)) => {
                            rest.push(f.to_os_string());
                            existing = p;
                        }
                        _ => return Err(outside()),
                    }
                }
                let canon = std::fs::canonicalize(existing)
                    .map_err(|e| Error::io("canonicalize", existing, e))?;
                let mut rel = canon
                    .strip_prefix(&root)
                    .map_err(|_| outside())?
                    .to_path_buf();
                for f in rest.into_iter().rev() {
                    rel.push(f);
                }
                rel
            }
        };
        let s = rel
            .to_str()
            .ok_or_else(|| invalid(Self::KIND, raw, "it is not valid UTF-8"))?;
        if s.is_empty() {
            return Err(invalid(
                Self::KIND,
                raw,
                "it names the workspace root itself",
            ));
        }
        Self::normalise(s, raw)
    }

    fn normalise(s: &str, raw: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(invalid(Self::KIND, raw, "it is empty"));
        }
        if let Some(c) = s.chars().find(|c| c.is_control() || *c == '\\') {
            return Err(invalid(
                Self::KIND,
                raw,
                format!("character {:?} is not allowed", c),
            ));
        }
        let mut body = s;
        while let Some(rest) = body.strip_prefix("./") {
            body = rest;
        }
        if let Some(rest) = body.strip_suffix('/') {
            body = rest;
        }
        let mut out = String::with_capacity(body.len());
        for seg in body.split('/') {
            match seg {
                "" => return Err(invalid(Self::KIND, raw, "it has an empty segment")),
                ".." => return Err(invalid(Self::KIND, raw, "'..' segments are not allowed")),
                "." => continue,
                seg if seg.len() > MAX_RESOURCE_SEGMENT_LEN => {
                    return Err(invalid(
                        Self::KIND,
                        raw,
                        format!(
                            "a segment is {} bytes long, the limit is {MAX_RESOURCE_SEGMENT_LEN}",
                            seg.len()
                        ),
                    ));
                }
                seg => {
                    if !out.is_empty() {
                        out.push('/');
                    }
                    out.push_str(seg);
                }
            }
        }
        if out.is_empty() {
            return Err(invalid(
                Self::KIND,
                raw,
                "it names the workspace root itself",
            ));
        }
        if out.len() > MAX_RESOURCE_LEN {
            return Err(invalid(
                Self::KIND,
                raw,
                format!(
                    "it is {} bytes long, the limit is {MAX_RESOURCE_LEN}",
                    out.len()
                ),
            ));
        }
        Ok(Self(out))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The normalised name as a relative path.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The slash-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// True when the name contains glob characters (`*`, `?`, `[`).
    pub fn is_pattern(&self) -> bool {
        self.0.contains(['*', '?', '['])
    }
}

/// True when joining `rel` onto a directory can only produce a path inside that directory.
pub(crate) fn stays_inside(rel: &Path) -> bool {
    rel.components().all(|c| matches!(c, Component::Normal(_)))
}

display_serde!(ChannelName);
display_serde!(ResourceName);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_names_are_rejected_with_the_name_in_the_error() {
        let long = "a".repeat(300);
        let hostile: &[&str] = &[
            "../etc/passwd",
            "/etc/x",
            "a/../../b",
            "a//b",
            "a\0b",
            "a\nb",
            &long,
            "",
            "..",
        ];
        for name in hostile {
            for err in [
                AgentId::new(*name).err(),
                ChannelName::new(*name).err(),
                ResourceName::new(name).err(),
            ] {
                let err = err.unwrap_or_else(|| panic!("{name:?} was accepted"));
                let shown = err.to_string();
                let escaped: String = name.escape_debug().to_string();
                assert!(
                    shown.contains(&escaped[..escaped.len().min(40)]),
                    "error {shown:?} does not name {name:?}"
                );
            }
        }
    }

    #[test]
    fn resource_names_are_normalised() {
        let cases = [
            ("src/api/user.rs", "src/api/user.rs"),
            ("./src/api/user.rs", "src/api/user.rs"),
            ("src/./api/", "src/api"),
            ("src/api/**", "src/api/**"),
        ];
        for (input, want) in cases {
            assert_eq!(ResourceName::new(input).unwrap().as_str(), want, "{input}");
        }
    }

    #[test]
    fn absolute_paths_inside_the_workspace_become_relative() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let abs = root.join("src/lib.rs");
        let name = ResourceName::in_workspace(root, abs.to_str().unwrap()).unwrap();
        assert_eq!(name.as_str(), "src/lib.rs");
        let err = ResourceName::in_workspace(root, "/etc/x").unwrap_err();
        assert!(matches!(err, Error::OutsideWorkspace { .. }), "{err}");
        assert!(err.to_string().contains("/etc/x"));
        let sneaky = format!("{}/../x", root.display());
        assert!(ResourceName::in_workspace(root, &sneaky).is_err());
    }

    proptest! {
        #[test]
        fn channel_names_round_trip_or_are_rejected(s in "\\PC{0,40}|[a-z./]{0,20}") {
            if let Ok(name) = ChannelName::new(s.clone()) {
                prop_assert_eq!(name.as_str(), s.as_str());
                prop_assert!(stays_inside(name.as_path()));
                let json = serde_json::to_string(&name).unwrap();
                let back: ChannelName = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(back, name);
            }
        }

        #[test]
        fn resource_names_never_leave_the_base(s in "\\PC{0,40}|[a-z./]{0,20}") {
            if let Ok(name) = ResourceName::new(&s) {
                prop_assert!(stays_inside(name.as_path()), "{:?} escapes", name);
                // Normalisation is idempotent: the normal form round-trips.
                let again = ResourceName::new(name.as_str()).unwrap();
                prop_assert_eq!(again, name);
            }
        }

        #[test]
        fn plain_names_round_trip_or_are_rejected(s in "\\PC{0,40}|[a-z.@+_-]{0,10}") {
            if let Ok(name) = AgentId::new(s.clone()) {
                prop_assert_eq!(name.as_str(), s.as_str());
                prop_assert!(stays_inside(name.as_path()));
                prop_assert_eq!(name.as_path().components().count(), 1);
            }
        }
    }
}
