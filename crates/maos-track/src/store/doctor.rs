//! `maos doctor` for the task store.

use maos_core::Workspace;
use maos_core::doctor::Finding;

use crate::Error;

/// Checks the task store of `ws`.
pub fn doctor(ws: &Workspace, repair: bool) -> Result<Vec<Finding>, Error> {
    let _ = (ws, repair);
    Ok(Vec::new())
}
