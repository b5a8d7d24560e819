//! maos-merge: git conflict prediction, merge coordination and automation.

mod detect;
mod error;

pub use detect::{
    Conflict, ConflictDetector, ConflictEntry, ConflictKind, ConflictRegion, DetectOptions,
    LineRange, MergeCheck, PairResult, Prediction, Relation,
};
pub use error::{Error, Result};
