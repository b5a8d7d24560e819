//! Fencing tokens from maos-lock, checked (under the tracker lock) before an update is
//! written.

use maos_core::{ResourceName, TaskId, Workspace};

pub use maos_lock::FencingToken;

use crate::Error;

/// Ok iff `token` is current for the lock on `resource`; otherwise [`Error::StaleToken`]
/// carrying maos-lock's reason.
pub(crate) fn check(
    ws: &Workspace,
    task: &TaskId,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<(), Error> {
    maos_lock::check_fencing_token(ws, resource, token).map_err(|source| Error::StaleToken {
        task: task.clone(),
        source: Box::new(source),
    })
}
