//! maos-merge benchmarks (being built; see its issue).

use crate::table::Table;

pub(crate) fn run(_table: &mut Table) -> anyhow::Result<()> {
    Ok(())
}
