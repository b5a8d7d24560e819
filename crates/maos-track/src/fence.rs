//! Fencing tokens from maos-lock, checked before an update is written.

use maos_core::{ResourceName, TaskId, Workspace};

use crate::Error;

/// The fencing token type (maos-lock's, while it is being integrated: a plain counter).
pub type FencingToken = u64;

/// Ok iff `token` is current for the lock on `resource`.
pub(crate) fn check(
    _ws: &Workspace,
    task: &TaskId,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<(), Error> {
    Err(Error::StaleToken {
        task: task.clone(),
        source: format!("cannot verify token {token} for {resource}: maos-lock not integrated")
            .into(),
    })
}
