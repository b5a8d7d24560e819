//! maos-core: the cost of a crash-safe publish beside a plain write.

use std::time::{Duration, Instant};

use maos_coordination::core::fsx;

use crate::table::{Row, Table, percentile_us};

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let payload = vec![b'x'; 512];
    let n = 300;

    let mut publish = Vec::with_capacity(n);
    for i in 0..n {
        let p = dir.path().join(format!("p{i}"));
        let t = Instant::now();
        fsx::write_new(&p, &payload)?;
        publish.push(t.elapsed());
    }
    // Baseline: write the file in place and fsync it (not crash-safe: a reader can see it
    // half-written, a crash can leave it truncated).
    let mut plain: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n {
        let p = dir.path().join(format!("w{i}"));
        let t = Instant::now();
        let f = std::fs::File::create(&p)?;
        std::io::Write::write_all(&mut &f, &payload)?;
        f.sync_all()?;
        plain.push(t.elapsed());
    }
    let v = percentile_us(&mut publish, 50.0);
    let b = percentile_us(&mut plain, 50.0);
    table.push(Row {
        group: "core",
        name: "publish 512 B create-only-if-absent (p50)".into(),
        value: v,
        baseline_name: "write in place + fsync (not crash-safe)".into(),
        baseline: b,
        unit: "us",
        higher_is_better: false,
        target: "informational (pays a directory fsync)".into(),
        met: true,
    });
    Ok(())
}
