//! `maos doctor [--repair]`: checks every file of a workspace, explains each problem with the
//! file, and with `--repair` fixes what can be fixed without losing acknowledged data
//! (quarantining what it removes under `.maos/quarantine/`).

use clap::Args;
use maos_coordination::Workspace;
use maos_coordination::core::doctor::{Finding, Severity};

use crate::ctx::Ctx;
use crate::exit::{Exit, Failure};

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Fix what can be fixed without losing acknowledged data; what is removed is moved to
    /// .maos/quarantine/ first.
    #[arg(long)]
    repair: bool,
}

/// Every store's check, in order.
fn checks(ws: &Workspace, repair: bool) -> anyhow::Result<Vec<Finding>> {
    let mut all = maos_coordination::core::doctor::check(ws, repair)?;
    all.extend(maos_coordination::lock::doctor(ws, repair)?);
    all.extend(maos_coordination::comm::doctor(ws, repair)?);
    all.extend(maos_coordination::track::doctor(ws, repair)?);
    all.extend(maos_coordination::merge::doctor(ws, repair)?);
    all.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.path.cmp(&b.path))
    });
    Ok(all)
}

pub(crate) fn run(args: DoctorArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = Workspace::open(&ctx.root)?;
    let findings = checks(&ws, args.repair)?;
    // Which backend: on PostgreSQL only the local files (config, quarantine) are checked.
    let (backend, location) = crate::status::backend_words(&ws)?;
    ctx.emit(&findings, || {
        let mut s = format!("backend {backend} ({location})\n");
        if findings.is_empty() {
            s.push_str(&format!("{}: no problem found", ws.maos_dir().display()));
            return s;
        }
        for f in &findings {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "note",
            };
            s.push_str(&format!(
                "{sev:<7} [{}] {}: {}\n        {}: {}\n",
                f.store,
                f.path.display(),
                f.problem,
                if f.repaired {
                    "repaired"
                } else if args.repair {
                    "not repaired"
                } else {
                    "--repair would"
                },
                f.remedy
            ));
        }
        s
    })?;
    let left = findings
        .iter()
        .filter(|f| f.severity == Severity::Error && !f.repaired)
        .count();
    if left > 0 {
        return Err(Failure::error(
            Exit::Error,
            format!(
                "{left} problem(s) need attention{}",
                if args.repair {
                    ""
                } else {
                    " (run `maos doctor --repair`)"
                }
            ),
        ));
    }
    Ok(Exit::Ok)
}
