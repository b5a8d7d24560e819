//! The content merge of one path (merge-ort's `handle_content_merge`): cached per
//! (base, ours, theirs, depth), through libgit2's xdiff.

use std::rc::Rc;

use git2::Oid;

use super::{Engine, Ent, FileMerge, LABEL_1, LABEL_2, MergeKey, file_type, is_binary, is_regular};
use crate::detect::types::MODE_SUBMODULE;
use crate::error::{GitContext as _, Result};

impl Engine<'_> {
    /// merge-ort's `handle_content_merge` for two entries of the same type.
    pub(super) fn merge_files(
        &self,
        o: Option<Ent>,
        a: Ent,
        b: Ent,
        marker_extra: u32,
    ) -> Result<FileMerge> {
        let depth = marker_extra / 2;
        let key = MergeKey {
            o,
            a,
            b,
            depth: marker_extra,
        };
        if let Some(m) = self.merges.borrow().get(&key) {
            return Ok(*m);
        }
        let o_mode = o.map_or(0, |o| o.mode);
        let mut clean = true;
        let mode = if a.mode == b.mode || a.mode == o_mode {
            b.mode
        } else {
            clean = b.mode == o_mode;
            a.mode
        };
        let o_oid = o.map(|o| o.oid);
        let mut binary = false;
        let oid = if a.oid == b.oid || Some(a.oid) == o_oid {
            b.oid
        } else if Some(b.oid) == o_oid {
            a.oid
        } else if is_regular(a.mode) {
            let two_way = o.is_none_or(|o| file_type(o.mode) != file_type(a.mode));
            let base: Rc<[u8]> = match o {
                Some(o) if !two_way => self.blob(o.oid)?,
                _ => Rc::from(&[][..]),
            };
            let (ours, theirs) = (self.blob(a.oid)?, self.blob(b.oid)?);
            if is_binary(&base) || is_binary(&ours) || is_binary(&theirs) {
                binary = true;
                clean = false;
                if depth > 0 {
                    self.make_blob(&base)?
                } else {
                    a.oid
                }
            } else {
                let (result, ok) = self.xdiff_merge(&base, &ours, &theirs, marker_extra, depth)?;
                if !ok {
                    clean = false;
                }
                self.make_blob(&result)?
            }
        } else if file_type(a.mode) == MODE_SUBMODULE {
            // Fast-forward a submodule when one side's commit contains the other's.
            let ff = |x: Oid, y: Oid| self.repo.graph_descendant_of(x, y).unwrap_or(false);
            if ff(b.oid, a.oid) {
                b.oid
            } else if ff(a.oid, b.oid) {
                a.oid
            } else {
                clean = false;
                match o {
                    Some(o) if depth > 0 => o.oid,
                    _ => a.oid,
                }
            }
        } else {
            // Symbolic links are never merged.
            clean = false;
            match o {
                Some(o) if depth > 0 => o.oid,
                _ => a.oid,
            }
        };
        let m = FileMerge {
            result: Ent { oid, mode },
            clean,
            binary,
        };
        self.merges.borrow_mut().insert(key, m);
        Ok(m)
    }

    fn xdiff_merge(
        &self,
        base: &[u8],
        ours: &[u8],
        theirs: &[u8],
        marker_extra: u32,
        depth: u32,
    ) -> Result<(Vec<u8>, bool)> {
        let input = |data| {
            let mut i = git2::MergeFileInput::new();
            i.content(data);
            i
        };
        let (bi, oi, ti) = (input(base), input(ours), input(theirs));
        let mut opts = git2::MergeFileOptions::new();
        let (l1, l2) = if depth > 0 {
            (LABEL_1, LABEL_2)
        } else {
            ("ours", "theirs")
        };
        opts.our_label(l1)
            .their_label(l2)
            .ancestor_label("merged common ancestors")
            .marker_size(u16::try_from(7 + marker_extra).unwrap_or(u16::MAX));
        let r = git2::merge_file(&bi, &oi, &ti, Some(&mut opts)).git("merge file")?;
        Ok((r.content().to_vec(), r.is_automergeable()))
    }
}
