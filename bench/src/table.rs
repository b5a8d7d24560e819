//! The result table: one row per figure, with its baseline, the ratio and the target.

use std::time::Duration;

/// One measured figure beside its baseline.
pub(crate) struct Row {
    pub(crate) group: &'static str,
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) baseline_name: String,
    pub(crate) baseline: f64,
    pub(crate) unit: &'static str,
    /// True when larger is better (throughput), false for times.
    pub(crate) higher_is_better: bool,
    pub(crate) target: String,
    /// Whether the target was met.
    pub(crate) met: bool,
}

#[derive(Default)]
pub(crate) struct Table {
    pub(crate) rows: Vec<Row>,
}

impl Table {
    pub(crate) fn push(&mut self, row: Row) {
        eprintln!(
            "[{}] {}: {:.3} {} (baseline {}: {:.3} {}) target {} -> {}",
            row.group,
            row.name,
            row.value,
            row.unit,
            row.baseline_name,
            row.baseline,
            row.unit,
            row.target,
            if row.met { "met" } else { "MISSED" }
        );
        self.rows.push(row);
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = String::from(
            "| group | figure | value | baseline (same run) | baseline value | ratio | target | met |\n\
             |---|---|---:|---|---:|---:|---|---|\n",
        );
        for r in &self.rows {
            let ratio = if r.higher_is_better {
                r.value / r.baseline
            } else {
                r.baseline / r.value
            };
            s.push_str(&format!(
                "| {} | {} | {} {} | {} | {} {} | {:.2}x | {} | {} |\n",
                r.group,
                r.name,
                fmt_num(r.value),
                r.unit,
                r.baseline_name,
                fmt_num(r.baseline),
                r.unit,
                ratio,
                r.target,
                if r.met { "yes" } else { "**no**" }
            ));
        }
        s.push_str("\nratio: how many times better than the baseline (>1 is better).\n");
        s
    }

    pub(crate) fn write_docs(&self, md: &str) -> anyhow::Result<()> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let machine = machine_description();
        let path = root.join("docs/benchmarks.md");
        let mut doc = format!(
            "# Benchmarks\n\nThe latest table from `cargo xtask bench --write-docs`, every figure measured \
             beside its baseline in the same run.\n\nMachine: {machine}\n\n{md}"
        );
        // The swarm section is `cargo xtask soak --write-docs`'s: keep it.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(swarm) = crate::soak::kept_section(&old) {
            doc = crate::soak::splice_section(&doc, &format!("{swarm}\n"))?;
        }
        std::fs::write(&path, doc)?;
        Ok(())
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{cpu}, {cores} cores, {mem} GiB RAM, Linux")
}

/// Median of a sample of durations, in microseconds.
#[allow(dead_code)] // used by the per-crate benchmark modules
pub(crate) fn median_us(samples: &mut [Duration]) -> f64 {
    percentile_us(samples, 50.0)
}

/// A percentile of a sample of durations, in microseconds.
pub(crate) fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    if samples.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[idx].as_secs_f64() * 1e6
}
