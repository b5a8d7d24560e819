//! Where a workspace is, and the layout of its `.maos/` directory.

use std::path::{Path, PathBuf};

use crate::{ChannelName, Error, Result, fsx};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Environment variable naming the workspace root explicitly.
pub const WORKSPACE_ENV: &str = "MAOS_WORKSPACE";

/// Name of the state directory inside a workspace root.
pub const MAOS_DIR: &str = ".maos";

/// Top-level directories of `.maos/`, created by [`Workspace::init`].
pub const LAYOUT_DIRS: &[&str] = &["agents", "channels", "locks", "tasks", "merge"];

/// How a workspace root was found (reported by `maos status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// `--workspace` or `MAOS_WORKSPACE`.
    Explicit,
    /// The nearest ancestor of the current directory holding `.maos/`.
    Ancestor,
    /// The root of the main worktree of the enclosing git repository.
    GitMainWorktree,
    /// The current directory.
    CurrentDir,
}

/// A maos workspace: a root directory (usually a repository) and its `.maos/` state directory.
///
/// ```
/// # fn main() -> maos_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let ws = maos_core::Workspace::init(dir.path())?;
/// assert!(ws.maos_dir().join("format").exists());
/// let again = maos_core::Workspace::open(dir.path())?;
/// assert_eq!(again.root(), ws.root());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    root: PathBuf,
    dir: PathBuf,
}

impl Workspace {
    /// Finds the workspace root for a process running in `cwd`: `explicit` (from
    /// `--workspace`), else `MAOS_WORKSPACE`, else the nearest ancestor holding `.maos/`, else
    /// the root of the main worktree of the enclosing git repository (so agents in separate
    /// `git worktree`s share one `.maos/`), else `cwd` itself.
    pub fn locate(explicit: Option<&Path>, cwd: &Path) -> Result<(PathBuf, Discovery)> {
        if let Some(p) = explicit {
            return Ok((absolute(p, cwd), Discovery::Explicit));
        }
        if let Some(p) = std::env::var_os(WORKSPACE_ENV).filter(|p| !p.is_empty()) {
            return Ok((absolute(Path::new(&p), cwd), Discovery::Explicit));
        }
        let cwd = absolute(cwd, cwd);
        let mut git_root = None;
        for dir in cwd.ancestors() {
            if is_real_dir(&dir.join(MAOS_DIR)) {
                return Ok((dir.to_path_buf(), Discovery::Ancestor));
            }
            if git_root.is_none() {
                git_root = main_worktree_root(dir);
            }
        }
        if let Some(root) = git_root {
            return Ok((root, Discovery::GitMainWorktree));
        }
        Ok((cwd, Discovery::CurrentDir))
    }

    /// [`Workspace::locate`] from the process's current directory.
    pub fn discover(explicit: Option<&Path>) -> Result<(PathBuf, Discovery)> {
        let cwd = std::env::current_dir().map_err(|e| Error::io("getcwd", ".", e))?;
        Self::locate(explicit, &cwd)
    }

    /// Opens an initialised workspace, checking its format version.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let dir = root.join(MAOS_DIR);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => return Err(Error::Symlink { path: dir }),
            Ok(m) if m.is_dir() => {}
            _ => return Err(Error::NotInitialized { path: root }),
        }
        let ws = Self { root, dir };
        ws.check_format()?;
        ws.check_permissions()?;
        Ok(ws)
    }

    /// Refuses a state directory that another user could write (as ssh refuses loose key
    /// permissions): maos trusts every process of the user owning `.maos/` and nobody else.
    /// `MAOS_ALLOW_SHARED_WORKSPACE=1` accepts a group-writable one (a team sharing a machine
    /// through a group); a world-writable one or one owned by another user is never accepted.
    fn check_permissions(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        let shared_ok = std::env::var_os("MAOS_ALLOW_SHARED_WORKSPACE").is_some_and(|v| v == "1");
        let mut dirs = vec![self.dir.clone()];
        dirs.extend(LAYOUT_DIRS.iter().map(|d| self.dir.join(d)));
        dirs.push(self.sessions_dir());
        for d in dirs {
            let m = match std::fs::symlink_metadata(&d) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let mode = m.mode() & 0o777;
            let problem = if m.uid() != me && me != 0 {
                Some(format!(
                    "it is owned by uid {}, not by you (uid {me})",
                    m.uid()
                ))
            } else if mode & 0o002 != 0 {
                Some(format!("any user can write it (mode {mode:03o})"))
            } else if mode & 0o020 != 0 && !shared_ok {
                Some(format!("its group can write it (mode {mode:03o})"))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Error::UnsafePermissions { path: d, problem });
            }
        }
        Ok(())
    }

    /// Creates the layout (idempotent and safe to race): `.maos/` and its directories with
    /// owner-only permissions, and the format-version file. An existing workspace of another
    /// format is refused.
    pub fn init(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let dir = root.join(MAOS_DIR);
        fsx::create_dir_private(&dir)?;
        let ws = Self { root, dir };
        for d in LAYOUT_DIRS {
            fsx::create_dir_private(&ws.dir.join(d))?;
        }
        match fsx::write_new(&ws.format_path(), format!("{FORMAT_VERSION}\n").as_bytes()) {
            Ok(()) => ws.exclude_from_git()?,
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        ws.check_format()?;
        tracing::debug!(root = %ws.root.display(), "workspace initialised");
        Ok(ws)
    }

    /// [`Workspace::open`] if initialised, else [`Workspace::init`].
    pub fn open_or_init(root: impl AsRef<Path>) -> Result<Self> {
        match Self::open(root.as_ref()) {
            Err(Error::NotInitialized { .. }) => Self::init(root),
            other => other,
        }
    }

    /// Keeps `.maos/` out of `git status`: when the root is a git main worktree, adds
    /// `/.maos/` to `.git/info/exclude` (a local, uncommitted ignore list) unless present.
    fn exclude_from_git(&self) -> Result<()> {
        let git = self.root.join(".git");
        if !is_real_dir(&git) {
            return Ok(());
        }
        let info = git.join("info");
        let path = info.join("exclude");
        let old = match fsx::read_bounded(&path, 1 << 20) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.is_not_found() => String::new(),
            Err(e) => return Err(e),
        };
        if old
            .lines()
            .any(|l| matches!(l.trim(), "/.maos/" | ".maos/" | ".maos" | "/.maos"))
        {
            return Ok(());
        }
        fsx::create_dir_private(&info)?;
        let mut new = old;
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str("# maos coordination state (added by `maos init`)\n/.maos/\n");
        fsx::write_replace(&path, new.as_bytes())
    }

    fn format_path(&self) -> PathBuf {
        self.dir.join("format")
    }

    fn check_format(&self) -> Result<()> {
        let path = self.format_path();
        let bytes = fsx::read_bounded(&path, 64).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotInitialized {
                path: self.root.clone(),
            },
            other => other,
        })?;
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        match text.parse::<u32>() {
            Ok(FORMAT_VERSION) => Ok(()),
            // A version number: written by another maos.
            Ok(_) => Err(Error::UnsupportedFormat {
                path,
                found: text,
                supported: FORMAT_VERSION,
            }),
            // Not a version at all: maos writes this file whole, once, so it was damaged.
            Err(_) => Err(Error::Corrupt {
                reason: format!(
                    "{} (maos writes the format version there once, whole, at `maos init`, so \
                     the file was damaged); if this workspace was made by this maos, restore it \
                     with `echo {FORMAT_VERSION} > {}`",
                    if text.is_empty() {
                        "it is empty".to_string()
                    } else {
                        format!(
                            "it holds {:?}, not a format version",
                            crate::excerpt(&text, 40)
                        )
                    },
                    path.display()
                ),
                path,
            }),
        }
    }

    /// The workspace root (the directory holding `.maos/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `.maos/` directory.
    pub fn maos_dir(&self) -> &Path {
        &self.dir
    }

    /// `.maos/<rel>`, after checking that no existing component of it is a symbolic link.
    /// `rel` must be relative and free of `..`.
    pub fn path(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        fsx::checked_join(&self.dir, rel.as_ref())
    }

    /// `.maos/config.json`: the workspace settings ([`Config`](crate::Config)).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// `.maos/sessions/`: which agent each client session acts as.
    pub fn sessions_dir(&self) -> PathBuf {
        self.dir.join("sessions")
    }

    /// `.maos/agents/`.
    pub fn agents_dir(&self) -> PathBuf {
        self.dir.join("agents")
    }

    /// `.maos/channels/`.
    pub fn channels_dir(&self) -> PathBuf {
        self.dir.join("channels")
    }

    /// `.maos/channels/<name>/`, checked for planted symbolic links.
    pub fn channel_dir(&self, name: &ChannelName) -> Result<PathBuf> {
        self.path(Path::new("channels").join(name.as_path()))
    }

    /// `.maos/locks/`.
    pub fn locks_dir(&self) -> PathBuf {
        self.dir.join("locks")
    }

    /// `.maos/tasks/`.
    pub fn tasks_dir(&self) -> PathBuf {
        self.dir.join("tasks")
    }

    /// `.maos/merge/`.
    pub fn merge_dir(&self) -> PathBuf {
        self.dir.join("merge")
    }

    /// True when `.maos/` lives on NFS, where the file backend's kernel locks and file events
    /// do not work across hosts: maos is then single-host only.
    pub fn is_network_filesystem(&self) -> bool {
        const NFS_SUPER_MAGIC: i64 = 0x6969;
        const SMB_SUPER_MAGIC: i64 = 0x517B;
        const CIFS_MAGIC: i64 = 0xFF53_4D42;
        match rustix::fs::statfs(&self.dir) {
            // f_type's integer type differs between architectures.
            #[allow(clippy::unnecessary_cast)]
            Ok(s) => matches!(
                s.f_type as i64,
                NFS_SUPER_MAGIC | SMB_SUPER_MAGIC | CIFS_MAGIC
            ),
            Err(_) => false,
        }
    }
}

fn absolute(p: &Path, cwd: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// If `dir` is the top of a git worktree, the root of the repository's main worktree.
///
/// Reads git's files directly (no `git` process): `.git` is either the repository directory
/// (a main worktree) or a file `gitdir: <path>` whose directory holds `commondir`, the path of
/// the shared repository directory whose parent is the main worktree.
fn main_worktree_root(dir: &Path) -> Option<PathBuf> {
    let dotgit = dir.join(".git");
    let meta = std::fs::symlink_metadata(&dotgit).ok()?;
    if meta.is_dir() {
        return Some(dir.to_path_buf());
    }
    if !meta.is_file() {
        return None;
    }
    let text = fsx::read_bounded(&dotgit, 4096).ok()?;
    let text = String::from_utf8(text).ok()?;
    let gitdir = text.trim().strip_prefix("gitdir:")?.trim();
    let gitdir = absolute(Path::new(gitdir), dir);
    let common = match fsx::read_bounded(&gitdir.join("commondir"), 4096) {
        Ok(c) => {
            let c = String::from_utf8(c).ok()?;
            absolute(Path::new(c.trim()), &gitdir)
        }
        // A submodule or a plain gitfile: its worktree is this directory.
        Err(_) => return Some(dir.to_path_buf()),
    };
    let common = std::fs::canonicalize(&common).ok()?;
    if common.file_name()? == ".git" {
        common.parent().map(Path::to_path_buf)
    } else {
        // A bare repository's worktrees have no main worktree: use this one.
        Some(dir.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let locks = ws.locks_dir();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Workspace::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("any user can write it") && err.contains("locks"),
            "{err}"
        );
        assert!(err.contains("chmod -R go-w"), "{err}");
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = Workspace::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("its group can write it"), "{err}");
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o700)).unwrap();
        Workspace::open(dir.path()).unwrap();
    }

    #[test]
    fn init_is_idempotent_and_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        Workspace::init(dir.path()).unwrap();
        let mode = std::fs::metadata(ws.maos_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        for d in LAYOUT_DIRS {
            assert!(ws.maos_dir().join(d).is_dir(), "{d}");
        }
    }

    #[test]
    fn init_keeps_maos_out_of_git_status() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git/info")).unwrap();
        std::fs::write(dir.path().join(".git/info/exclude"), "*.swp").unwrap();
        Workspace::init(dir.path()).unwrap();
        Workspace::init(dir.path()).unwrap();
        let exclude = std::fs::read_to_string(dir.path().join(".git/info/exclude")).unwrap();
        assert!(exclude.starts_with("*.swp\n"), "{exclude}");
        assert_eq!(exclude.matches("/.maos/").count(), 1, "{exclude}");
    }

    #[test]
    fn unknown_format_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        std::fs::write(ws.maos_dir().join("format"), "7\n").unwrap();
        let err = Workspace::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
        assert!(err.to_string().contains("\"7\""), "{err}");
    }

    #[test]
    fn a_damaged_format_file_is_named_with_its_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        for (content, says) in [
            ("", "it is empty"),
            ("\u{0}garbage", "not a format version"),
        ] {
            std::fs::write(ws.maos_dir().join("format"), content).unwrap();
            let err = Workspace::open(dir.path()).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Corrupt { .. }), "{text}");
            assert!(text.contains(says), "{text}");
            assert!(
                text.contains("echo 1 >") && text.contains("maos doctor"),
                "{text}"
            );
            assert!(!text.contains("upgrade maos"), "{text}");
        }
    }

    #[test]
    fn opening_an_uninitialised_directory_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = Workspace::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::NotInitialized { .. }), "{err}");
    }

    #[test]
    fn the_nearest_ancestor_with_maos_wins() {
        let dir = tempfile::tempdir().unwrap();
        Workspace::init(dir.path()).unwrap();
        let deep = dir.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        let (root, how) = Workspace::locate(None, &deep).unwrap();
        assert_eq!(root, dir.path());
        assert_eq!(how, Discovery::Ancestor);
        let (root, how) = Workspace::locate(Some(Path::new("x")), &deep).unwrap();
        assert_eq!(root, deep.join("x"));
        assert_eq!(how, Discovery::Explicit);
    }

    #[test]
    fn a_planted_symlink_cannot_redirect_a_channel() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.channels_dir().join("evil")).unwrap();
        let name = ChannelName::new("evil/inbox").unwrap();
        let err = ws.channel_dir(&name).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("evil"), "{err}");
    }
}
