//! A three-way tree merge modelled on git's merge-ort (`git merge-tree --write-tree`), on
//! top of libgit2's object database and its xdiff file merge.
//!
//! - Merge bases: all of them; several are merged first, oldest first, into a virtual base
//!   (conflicts inside it kept as conflict-marker content, as git does).
//! - Trees are read once per tree object ([`Engine`] caches them) and walked in parallel;
//!   a subtree identical on all three sides is never opened.
//! - Renames per side (`rename.rs`, git's rules), then merge-ort's rename cases (1-to-1,
//!   1-to-2, 2-to-1 and add collisions, rename/delete), then per path the three-way
//!   resolution of git's `process_entry`, content merges with libgit2's `git_merge_file`
//!   (the same xdiff merge git uses), binary files and symbolic links never merged.
//! - Directory renames (`merge.directoryRenames=conflict`, git's default): a path the other
//!   side added in a directory one side renamed moves with it and is reported.
//!
//! One [`Engine`] serves many merges of one repository and shares trees, blobs, similarity
//! signatures, content merges and merge bases between them (`merge check --all`).

mod bases;
mod dirs;
mod files;
mod rename;
mod similarity;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use git2::{Oid, Repository};

use super::types::{Conflict, ConflictEntry, ConflictKind, MODE_TREE, describe};
use crate::error::{GitContext as _, Result};
pub(crate) use rename::Rename;
use rename::{Dest, Source};
pub(crate) use similarity::is_binary;

/// One tree entry: an object and its git mode. A mode of [`MODE_TREE`] is a subtree left
/// unopened because it is the same on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ent {
    pub(crate) oid: Oid,
    pub(crate) mode: u32,
}

pub(crate) fn file_type(mode: u32) -> u32 {
    mode & 0o170000
}

pub(crate) fn is_regular(mode: u32) -> bool {
    file_type(mode) == 0o100000
}

/// A flattened tree: full path (bytes) to entry, in git's path order.
pub(crate) type Flat = BTreeMap<Vec<u8>, Ent>;

/// A tree to merge: an object, or the in-memory result of merging merge bases.
#[derive(Debug, Clone)]
pub(crate) enum TreeRef {
    Real(Oid),
    Virtual(Rc<Flat>),
    Empty,
}

/// Options of the engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineOptions {
    pub(crate) find_renames: bool,
    pub(crate) rename_threshold: u32,
}

/// The result of merging three trees.
#[derive(Debug, Default)]
pub(crate) struct TreeMerge {
    /// The merged tree: what git writes (conflicted paths hold what git leaves in the tree).
    pub(crate) entries: Flat,
    /// The conflicts, in git's shapes.
    pub(crate) conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone)]
struct TreeEnt {
    name: Vec<u8>,
    ent: Ent,
}

/// The per-path state of a merge (merge-ort's `conflict_info`).
#[derive(Debug, Clone, Default)]
struct Info {
    stages: [Option<Ent>; 3],
    names: [Option<Vec<u8>>; 3],
    /// Which stages matched when the paths were collected: 6 both sides, 3 base and ours,
    /// 5 base and theirs (merge-ort's `match_mask`).
    match_mask: u8,
    path_conflict: bool,
    /// Resolved by a rename: the path goes away.
    removed: bool,
    kind: Option<ConflictKind>,
}

#[derive(Debug)]
struct CommitInfo {
    parents: Vec<Oid>,
    time: i64,
    tree: Oid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MergeKey {
    o: Option<Ent>,
    a: Ent,
    b: Ent,
    depth: u32,
}

#[derive(Debug, Clone, Copy)]
struct FileMerge {
    result: Ent,
    clean: bool,
    binary: bool,
}

/// Merge bases per (unordered) pair of commits.
type BaseCache = HashMap<(Oid, Oid), Rc<[Oid]>>;

/// A merge engine over one repository, with caches shared by every merge it runs.
pub(crate) struct Engine<'r> {
    repo: &'r Repository,
    opts: EngineOptions,
    trees: RefCell<HashMap<Oid, Rc<[TreeEnt]>>>,
    flats: RefCell<HashMap<Oid, Rc<Flat>>>,
    blobs: RefCell<HashMap<Oid, Rc<[u8]>>>,
    /// Blobs made by merges (conflict-marker content of virtual bases, merged files),
    /// not in the object database.
    made: RefCell<HashMap<Oid, Rc<[u8]>>>,
    signatures: RefCell<HashMap<Oid, rename::SignatureRef>>,
    merges: RefCell<HashMap<MergeKey, FileMerge>>,
    bases: RefCell<BaseCache>,
    commits: RefCell<HashMap<Oid, Rc<CommitInfo>>>,
    base_trees: RefCell<HashMap<Vec<Oid>, TreeRef>>,
    stats: std::cell::Cell<EngineStats>,
}

/// What an engine read from the repository and computed, over its life: with its caches
/// each tree and blob is read once and each pair's merge bases are computed once, however
/// many merges share them (`merge check --all`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EngineStats {
    /// Tree objects read from the object database.
    pub(crate) trees_read: u64,
    /// Blobs read from the object database.
    pub(crate) blobs_read: u64,
    /// Merge-base computations (pairs of commits).
    pub(crate) bases_computed: u64,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("opts", &self.opts).finish()
    }
}

const LABEL_1: &str = "Temporary merge branch 1";
const LABEL_2: &str = "Temporary merge branch 2";

impl<'r> Engine<'r> {
    pub(crate) fn new(repo: &'r Repository, opts: EngineOptions) -> Self {
        // git does not re-hash every object it reads; libgit2 does by default (a third of
        // a merge's time goes to SHA-1). Object integrity is `git fsck`'s job.
        git2::opts::strict_hash_verification(false);
        Self {
            repo,
            opts,
            trees: Default::default(),
            flats: Default::default(),
            blobs: Default::default(),
            made: Default::default(),
            signatures: Default::default(),
            merges: Default::default(),
            bases: Default::default(),
            commits: Default::default(),
            base_trees: Default::default(),
            stats: Default::default(),
        }
    }

    /// What this engine read and computed so far.
    pub(crate) fn stats(&self) -> EngineStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut EngineStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    pub(crate) fn repo(&self) -> &'r Repository {
        self.repo
    }

    // ----- objects -------------------------------------------------------------------

    fn tree(&self, oid: Oid) -> Result<Rc<[TreeEnt]>> {
        if let Some(t) = self.trees.borrow().get(&oid) {
            return Ok(t.clone());
        }
        let tree = self.repo.find_tree(oid).git("read tree")?;
        self.count(|s| s.trees_read += 1);
        let list: Rc<[TreeEnt]> = tree
            .iter()
            .map(|e| TreeEnt {
                name: e.name_bytes().to_vec(),
                ent: Ent {
                    oid: e.id(),
                    mode: u32::try_from(e.filemode()).unwrap_or(0),
                },
            })
            .collect();
        self.trees.borrow_mut().insert(oid, list.clone());
        Ok(list)
    }

    /// Every file of a tree object, subtrees opened.
    fn flat(&self, oid: Oid) -> Result<Rc<Flat>> {
        if let Some(f) = self.flats.borrow().get(&oid) {
            return Ok(f.clone());
        }
        let mut out = Flat::new();
        self.flatten_into(oid, &mut Vec::new(), &mut out)?;
        let out = Rc::new(out);
        self.flats.borrow_mut().insert(oid, out.clone());
        Ok(out)
    }

    fn flatten_into(&self, oid: Oid, prefix: &mut Vec<u8>, out: &mut Flat) -> Result<()> {
        for e in self.tree(oid)?.iter() {
            let len = prefix.len();
            prefix.extend_from_slice(&e.name);
            if file_type(e.ent.mode) == MODE_TREE {
                prefix.push(b'/');
                self.flatten_into(e.ent.oid, prefix, out)?;
            } else {
                out.insert(prefix.clone(), e.ent);
            }
            prefix.truncate(len);
        }
        Ok(())
    }

    /// A blob's bytes: made by a merge, or from the object database.
    pub(crate) fn blob(&self, oid: Oid) -> Result<Rc<[u8]>> {
        if let Some(b) = self.made.borrow().get(&oid) {
            return Ok(b.clone());
        }
        if let Some(b) = self.blobs.borrow().get(&oid) {
            return Ok(b.clone());
        }
        let blob = self.repo.find_blob(oid).git("read blob")?;
        self.count(|s| s.blobs_read += 1);
        let data: Rc<[u8]> = Rc::from(blob.content());
        self.blobs.borrow_mut().insert(oid, data.clone());
        Ok(data)
    }

    fn blob_size(&self, oid: Oid) -> Result<u64> {
        Ok(self.blob(oid)?.len() as u64)
    }

    fn signature(&self, oid: Oid) -> Result<rename::SignatureRef> {
        if let Some(s) = self.signatures.borrow().get(&oid) {
            return Ok(s.clone());
        }
        let s = Rc::new(similarity::Signature::of(&self.blob(oid)?));
        self.signatures.borrow_mut().insert(oid, s.clone());
        Ok(s)
    }

    fn make_blob(&self, data: &[u8]) -> Result<Oid> {
        let oid = Oid::hash_object(git2::ObjectType::Blob, data).git("hash blob")?;
        if !self.blobs.borrow().contains_key(&oid) {
            self.made
                .borrow_mut()
                .entry(oid)
                .or_insert_with(|| Rc::from(data));
        }
        Ok(oid)
    }

    /// The blobs a merge made that are not in the object database (to write a merged tree).
    pub(crate) fn made_blob(&self, oid: Oid) -> Option<Rc<[u8]>> {
        self.made.borrow().get(&oid).cloned()
    }

    // ----- the tree merge ------------------------------------------------------------

    /// The three inputs as flat maps of the paths that differ somewhere, and the entries
    /// equal on all three sides (files, and subtrees left unopened), which no rename,
    /// conflict or directory rule can involve.
    fn inputs(&self, trees: [&TreeRef; 3]) -> Result<([Flat; 3], Flat)> {
        let mut out: [Flat; 3] = Default::default();
        let mut same = Flat::new();
        if trees.iter().all(|t| !matches!(t, TreeRef::Virtual(_))) {
            let oids = trees.map(|t| match t {
                TreeRef::Real(o) => Some(*o),
                _ => None,
            });
            self.walk3(&mut Vec::new(), oids, &mut out, &mut same)?;
            return Ok((out, same));
        }
        for (i, t) in trees.iter().enumerate() {
            match t {
                TreeRef::Real(o) => out[i] = (*self.flat(*o)?).clone(),
                TreeRef::Empty => {}
                TreeRef::Virtual(f) => {
                    for (p, e) in f.iter() {
                        if file_type(e.mode) == MODE_TREE {
                            let mut prefix = p.clone();
                            prefix.push(b'/');
                            self.flatten_into(e.oid, &mut prefix, &mut out[i])?;
                        } else {
                            out[i].insert(p.clone(), *e);
                        }
                    }
                }
            }
        }
        Ok((out, same))
    }

    fn walk3(
        &self,
        prefix: &mut Vec<u8>,
        trees: [Option<Oid>; 3],
        out: &mut [Flat; 3],
        same: &mut Flat,
    ) -> Result<()> {
        let mut names: BTreeMap<Vec<u8>, [Option<Ent>; 3]> = BTreeMap::new();
        for (i, t) in trees.iter().enumerate() {
            if let Some(oid) = t {
                for e in self.tree(*oid)?.iter() {
                    names.entry(e.name.clone()).or_default()[i] = Some(e.ent);
                }
            }
        }
        for (name, ents) in names {
            let len = prefix.len();
            prefix.extend_from_slice(&name);
            if let Some(e) = ents[0]
                && ents[0] == ents[1]
                && ents[1] == ents[2]
            {
                same.insert(prefix.clone(), e);
            } else {
                let mut sub = [None; 3];
                for (i, e) in ents.iter().enumerate() {
                    match e {
                        Some(e) if file_type(e.mode) == MODE_TREE => sub[i] = Some(e.oid),
                        Some(e) => {
                            out[i].insert(prefix.clone(), *e);
                        }
                        None => {}
                    }
                }
                if sub.iter().any(Option::is_some) {
                    prefix.push(b'/');
                    self.walk3(prefix, sub, out, same)?;
                }
            }
            prefix.truncate(len);
        }
        Ok(())
    }

    /// Merges `ours` and `theirs` against `base`. `depth` 0 is the merge asked for; deeper
    /// ones build virtual merge bases (conflicts become content, never errors).
    pub(crate) fn merge_trees(
        &self,
        base: &TreeRef,
        ours: &TreeRef,
        theirs: &TreeRef,
        depth: u32,
    ) -> Result<TreeMerge> {
        let (maps, same) = self.inputs([base, ours, theirs])?;
        let mut paths: BTreeMap<Vec<u8>, Info> = BTreeMap::new();
        for (i, m) in maps.iter().enumerate() {
            for (p, e) in m {
                let info = paths.entry(p.clone()).or_default();
                info.stages[i] = Some(*e);
                info.names[i] = Some(p.clone());
            }
        }
        for info in paths.values_mut() {
            let [o, a, b] = info.stages;
            let same = |x: Option<Ent>, y: Option<Ent>| x.is_some() && x == y;
            info.match_mask = if same(a, b) {
                6 | if same(o, a) { 1 } else { 0 }
            } else if same(o, a) {
                3
            } else if same(o, b) {
                5
            } else {
                0
            };
        }
        if self.opts.find_renames {
            let mut renames: Vec<(Rename, usize)> = Vec::new();
            let dir_info = dirs::DirInfo::new(&maps, &same);
            let mut side_renames: [Vec<Rename>; 3] = Default::default();
            for side in [1usize, 2] {
                let other = 3 - side;
                let (mut sources, mut dests) = (Vec::new(), Vec::new());
                for (p, info) in &paths {
                    match (info.stages[0], info.stages[side]) {
                        (Some(b), None) => sources.push(Source {
                            path: p.clone(),
                            ent: b,
                            relevant: info.stages[other] != Some(b)
                                || dir_info.location_relevant(side, p),
                        }),
                        (None, Some(s)) => dests.push(Dest {
                            path: p.clone(),
                            ent: s,
                        }),
                        _ => {}
                    }
                }
                side_renames[side] =
                    self.detect_renames(&sources, &dests, self.opts.rename_threshold)?;
            }
            // Directory renames: paths the other side added under a directory this side
            // renamed move with it.
            let moves = dir_info.apply(&side_renames, &maps, &same);
            for side in [1usize, 2] {
                for r in std::mem::take(&mut side_renames[side]) {
                    renames.push((r, side));
                }
            }
            for m in moves {
                self.move_for_dir_rename(&mut paths, &mut renames, m);
            }
            renames.sort_by(|(a, sa), (b, sb)| a.src.cmp(&b.src).then(sa.cmp(sb)));
            self.process_renames(&mut paths, &renames, depth)?;
        }
        let mut out = TreeMerge {
            entries: same,
            conflicts: Vec::new(),
        };
        let mut results: BTreeMap<Vec<u8>, (Option<Ent>, Info, bool)> = BTreeMap::new();
        for (p, mut info) in paths {
            if info.removed {
                continue;
            }
            let (ent, clean, kind) = self.process_entry(&info, depth)?;
            if !clean {
                info.kind = info.kind.or(kind);
            }
            results.insert(p, (ent, info, clean));
        }
        // File/directory: a file where the merged tree keeps a directory moves aside.
        let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
        for (p, (e, _, _)) in &results {
            if e.is_some() {
                let mut d = p.as_slice();
                while let Some(i) = d.iter().rposition(|c| *c == b'/') {
                    d = &d[..i];
                    if !dirs.insert(d.to_vec()) {
                        break;
                    }
                }
            }
        }
        let mut unclean: BTreeMap<Vec<u8>, Info> = BTreeMap::new();
        for (p, (ent, mut info, mut clean)) in results {
            match ent {
                Some(e) if dirs.contains(&p) => {
                    clean = false;
                    info.kind = Some(ConflictKind::FileDirectory);
                    let label = if depth > 0 { LABEL_2 } else { "theirs" };
                    let moved = unique_path(&p, label, &out.entries, &dirs);
                    out.entries.insert(moved, e);
                }
                Some(e) => {
                    out.entries.insert(p.clone(), e);
                }
                None => {}
            }
            if !clean && depth == 0 {
                unclean.insert(p, info);
            }
        }
        out.conflicts = self.conflicts_of(&unclean)?;
        Ok(out)
    }

    /// The public conflicts of the unclean paths; a rename/rename(1to2) is one conflict
    /// (its source and both destinations).
    fn conflicts_of(&self, unclean: &BTreeMap<Vec<u8>, Info>) -> Result<Vec<Conflict>> {
        let mut grouped: BTreeSet<&[u8]> = BTreeSet::new();
        let mut out = Vec::new();
        for (p, info) in unclean {
            if info.kind == Some(ConflictKind::RenameRename)
                && info.stages[0].is_some()
                && info.stages[1].is_none()
                && info.stages[2].is_none()
                && let (Some(d1), Some(d2)) = (&info.names[1], &info.names[2])
            {
                let mut joined = info.clone();
                joined.stages[1] = unclean.get(d1).and_then(|x| x.stages[1]);
                joined.stages[2] = unclean.get(d2).and_then(|x| x.stages[2]);
                joined.names[0] = Some(p.clone());
                grouped.insert(d1);
                grouped.insert(d2);
                out.push(self.conflict(p, &joined)?);
            }
        }
        for (p, info) in unclean {
            if grouped.contains(p.as_slice()) && info.stages[0].is_none() {
                continue;
            }
            if info.kind == Some(ConflictKind::RenameRename)
                && info.stages[1].is_none()
                && info.stages[2].is_none()
            {
                continue; // the source of a rename/rename(1to2), reported above
            }
            out.push(self.conflict(p, info)?);
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Moves a path the other side added (or renamed to) into the renamed directory.
    fn move_for_dir_rename(
        &self,
        paths: &mut BTreeMap<Vec<u8>, Info>,
        renames: &mut [(Rename, usize)],
        m: dirs::Move,
    ) {
        // A rename of the other side whose destination moves: rewrite its destination.
        if let Some((r, _)) = renames
            .iter_mut()
            .find(|(r, s)| *s == m.side && r.dst == m.from)
        {
            r.dst = m.to.clone();
        }
        let Some(mut info) = paths.remove(&m.from) else {
            return;
        };
        let target = paths.entry(m.to.clone()).or_default();
        let side = m.side;
        if target.stages[side].is_none() {
            target.stages[side] = info.stages[side].take();
            target.names[side] = Some(m.to.clone());
            target.path_conflict = true;
            target.kind = Some(ConflictKind::FileLocation);
        }
        if info.stages.iter().any(Option::is_some) {
            paths.insert(m.from, info);
        }
    }

    /// merge-ort's `process_renames`.
    fn process_renames(
        &self,
        paths: &mut BTreeMap<Vec<u8>, Info>,
        renames: &[(Rename, usize)],
        depth: u32,
    ) -> Result<()> {
        let mut i = 0;
        while i < renames.len() {
            let (r, side) = &renames[i];
            let side = *side;
            if i + 1 < renames.len() && renames[i + 1].0.src == r.src {
                // Renamed on both sides.
                let (r2, _) = &renames[i + 1];
                let base = paths.get(&r.src).and_then(|x| x.stages[0]);
                if r.dst == r2.dst {
                    // The same way: a normal three-way merge at the destination.
                    if let Some(src) = paths.get_mut(&r.src) {
                        src.removed = true;
                    }
                    let dst = paths.entry(r.dst.clone()).or_default();
                    dst.stages[0] = base;
                    dst.names[0] = Some(r.src.clone());
                } else {
                    // rename/rename(1to2): both destinations get the content merge, the
                    // source stays conflicted.
                    let a = paths.get(&r.dst).and_then(|x| x.stages[1]);
                    let b = paths.get(&r2.dst).and_then(|x| x.stages[2]);
                    if let (Some(a), Some(b)) = (a, b) {
                        let m = self.merge_files(base, a, b, 1 + 2 * depth)?;
                        let (ra, rb) = if !m.clean && m.result == a {
                            (a, b)
                        } else {
                            (m.result, m.result)
                        };
                        if let Some(d1) = paths.get_mut(&r.dst) {
                            d1.stages[1] = Some(ra);
                            d1.path_conflict = true;
                            d1.kind = Some(ConflictKind::RenameRename);
                        }
                        if let Some(d2) = paths.get_mut(&r2.dst) {
                            d2.stages[2] = Some(rb);
                            d2.path_conflict = true;
                            d2.kind = Some(ConflictKind::RenameRename);
                        }
                    }
                    if let Some(src) = paths.get_mut(&r.src) {
                        src.path_conflict = true;
                        src.kind = Some(ConflictKind::RenameRename);
                        src.names[1] = Some(r.dst.clone());
                        src.names[2] = Some(r2.dst.clone());
                    }
                }
                i += 2;
                continue;
            }
            let other = 3 - side;
            let Some(old) = paths.get(&r.src).cloned() else {
                i += 1;
                continue;
            };
            let new = paths.get(&r.dst).cloned().unwrap_or_default();
            let source_deleted = old.stages[other].is_none() && old.stages[side].is_none();
            let mut collision = new.stages[other].is_some();
            let type_changed = !source_deleted
                && match (old.stages[other], new.stages[side]) {
                    (Some(o), Some(n)) => is_regular(o.mode) != is_regular(n.mode),
                    _ => false,
                };
            if type_changed && collision {
                collision = false;
            }
            let dst = paths.entry(r.dst.clone()).or_default();
            if collision && !source_deleted {
                // rename/add or rename/rename(2to1): merge the rename first, then the two
                // files meet at the destination.
                let (o, a, b) = (old.stages[0], old.stages[1], old.stages[2]);
                let (a, b) = if side == 1 {
                    (new.stages[1], b)
                } else {
                    (a, new.stages[2])
                };
                if let (Some(a), Some(b)) = (a, b) {
                    let m = self.merge_files(o, a, b, 1 + 2 * depth)?;
                    dst.stages[side] = Some(m.result);
                    if !m.clean {
                        dst.kind = Some(ConflictKind::Content);
                    }
                }
                if let Some(src) = paths.get_mut(&r.src) {
                    src.removed = true;
                }
            } else if collision && source_deleted {
                dst.path_conflict = true;
                dst.kind = Some(ConflictKind::RenameDelete);
            } else {
                dst.stages[0] = old.stages[0];
                dst.names[0] = Some(r.src.clone());
                if type_changed {
                    if let Some(src) = paths.get_mut(&r.src) {
                        src.stages[0] = None;
                    }
                } else if source_deleted {
                    dst.path_conflict = true;
                    dst.kind = Some(ConflictKind::RenameDelete);
                } else {
                    dst.stages[other] = old.stages[other];
                    dst.names[other] = Some(r.src.clone());
                }
            }
            if !type_changed && let Some(src) = paths.get_mut(&r.src) {
                src.removed = true;
            }
            i += 1;
        }
        Ok(())
    }

    /// merge-ort's `process_entry` for one path: the result, whether it is clean, and the
    /// kind of conflict when it is not.
    fn process_entry(
        &self,
        info: &Info,
        depth: u32,
    ) -> Result<(Option<Ent>, bool, Option<ConflictKind>)> {
        let [o, a, b] = info.stages;
        let pc = info.path_conflict;
        // Sides that matched before renames moved stages around (merge-ort's `match_mask`).
        match info.match_mask {
            6 | 7 => return Ok((a, !pc, info.kind)),
            3 => return Ok((b, b.is_none() || !pc, info.kind)),
            5 => return Ok((a, a.is_none() || !pc, info.kind)),
            _ => {}
        }
        match (o, a, b) {
            (_, Some(x), Some(y)) if file_type(x.mode) != file_type(y.mode) => {
                // Two different kinds of object (file, symlink, submodule).
                Ok((
                    if depth > 0 { o } else { Some(x) },
                    false,
                    Some(ConflictKind::Mode),
                ))
            }
            (_, Some(x), Some(y)) => {
                let m = self.merge_files(o, x, y, 2 * depth)?;
                let kind = if m.binary {
                    ConflictKind::Binary
                } else if o.is_none() {
                    ConflictKind::AddAdd
                } else if !is_regular(x.mode)
                    || x.oid == y.oid
                    || m.result.oid != x.oid && m.result.oid != y.oid && m.clean
                {
                    ConflictKind::Mode
                } else {
                    ConflictKind::Content
                };
                let kind = info.kind.filter(|_| pc).unwrap_or(kind);
                Ok((Some(m.result), m.clean && !pc, Some(kind)))
            }
            (Some(base), Some(_), None) | (Some(base), None, Some(_)) => {
                // Modify/delete: git keeps the modified version (the base's inside a
                // virtual merge base).
                let kept = if depth > 0 { Some(base) } else { a.or(b) };
                Ok((
                    kept,
                    false,
                    Some(info.kind.unwrap_or(ConflictKind::ModifyDelete)),
                ))
            }
            (None, Some(one), None) | (None, None, Some(one)) => Ok((Some(one), !pc, info.kind)),
            (Some(_), None, None) | (None, None, None) => Ok((None, !pc, info.kind)),
        }
    }

    /// The public conflict for a path left unclean.
    fn conflict(&self, path: &[u8], info: &Info) -> Result<Conflict> {
        let entry = |i: usize| -> Option<ConflictEntry> {
            let e = info.stages[i]?;
            let p = info.names[i].clone().unwrap_or_else(|| path.to_vec());
            Some(ConflictEntry {
                path: String::from_utf8_lossy(&p).into_owned(),
                oid: e.oid.to_string(),
                mode: e.mode,
            })
        };
        let kind = info.kind.unwrap_or(ConflictKind::Other);
        let p = String::from_utf8_lossy(path).into_owned();
        let (ancestor, target, source) = (entry(0), entry(1), entry(2));
        let p = if kind == ConflictKind::RenameRename {
            source
                .as_ref()
                .or(target.as_ref())
                .map_or(p, |e| e.path.clone())
        } else {
            p
        };
        let regions = if kind == ConflictKind::Content {
            match (&ancestor, &target, &source) {
                (Some(a), Some(t), Some(s)) => {
                    let get = |e: &ConflictEntry| -> Result<Rc<[u8]>> {
                        self.blob(Oid::from_str(&e.oid).git("parse oid")?)
                    };
                    super::regions::regions_of(&get(a)?, &get(t)?, &get(s)?)?
                }
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let description = describe(kind, &ancestor, &target, &source, &regions);
        Ok(Conflict {
            path: p,
            kind,
            ancestor,
            target,
            source,
            regions,
            description,
        })
    }
}

/// git's `unique_path`: `PATH~BRANCH` (slashes in the branch name made `_`), numbered if
/// that is taken.
fn unique_path(path: &[u8], branch: &str, taken: &Flat, dirs: &BTreeSet<Vec<u8>>) -> Vec<u8> {
    let mut base = path.to_vec();
    base.push(b'~');
    base.extend(branch.bytes().map(|c| if c == b'/' { b'_' } else { c }));
    let mut p = base.clone();
    let mut n = 0u32;
    while taken.contains_key(&p) || dirs.contains(&p) {
        p = base.clone();
        p.extend(format!("_{n}").bytes());
        n += 1;
    }
    p
}

/// Writes a merged tree (and the blobs the merge made) to the object database.
pub(crate) fn write_tree(engine: &Engine<'_>, entries: &Flat) -> Result<Oid> {
    let repo = engine.repo();
    let items: Vec<(&[u8], Ent)> = entries.iter().map(|(p, e)| (p.as_slice(), *e)).collect();
    write_level(engine, repo, &items)
}

fn write_level(engine: &Engine<'_>, repo: &Repository, items: &[(&[u8], Ent)]) -> Result<Oid> {
    let mut tb = repo.treebuilder(None).git("tree builder")?;
    let mut i = 0;
    while i < items.len() {
        let (path, ent) = items[i];
        match path.iter().position(|c| *c == b'/') {
            None => {
                if let Some(data) = engine.made_blob(ent.oid) {
                    repo.blob(&data).git("write blob")?;
                }
                let mode = i32::try_from(ent.mode).unwrap_or(0o100644);
                tb.insert(path, ent.oid, mode).git("tree entry")?;
                i += 1;
            }
            Some(k) => {
                let dir = &path[..k];
                let mut j = i;
                let mut sub: Vec<(&[u8], Ent)> = Vec::new();
                while j < items.len()
                    && items[j].0.len() > k
                    && &items[j].0[..k] == dir
                    && items[j].0[k] == b'/'
                {
                    sub.push((&items[j].0[k + 1..], items[j].1));
                    j += 1;
                }
                let oid = write_level(engine, repo, &sub)?;
                tb.insert(dir, oid, 0o040000).git("tree entry")?;
                i = j;
            }
        }
    }
    tb.write().git("write tree")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(oid: u8, mode: u32) -> Ent {
        Ent {
            oid: Oid::from_bytes(&[oid; 20]).unwrap(),
            mode,
        }
    }

    /// Content on one side and mode on the other merge cleanly, each taken from the side
    /// that changed it; content on both sides does not; a type change is never trivial.
    #[test]
    fn each_attribute_comes_from_the_side_that_changed_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let e = Engine::new(
            &repo,
            EngineOptions {
                find_renames: true,
                rename_threshold: 50,
            },
        );
        let base = ent(1, 0o100644);
        let m = e
            .merge_files(Some(base), ent(2, 0o100644), ent(1, 0o100755), 0)
            .unwrap();
        assert!(m.clean);
        assert_eq!(m.result, ent(2, 0o100755));
        let info = Info {
            stages: [Some(base), Some(ent(1, 0o120000)), Some(ent(3, 0o100644))],
            ..Info::default()
        };
        let (_, clean, kind) = e.process_entry(&info, 0).unwrap();
        assert!(!clean);
        assert_eq!(kind, Some(ConflictKind::Mode));
    }
}
