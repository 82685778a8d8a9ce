//! Medians over rounds, ratios against the other targets, a JSON file and
//! a PNG chart.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::pgbench::{Run, Usage};

/// One pgbench run of one target in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub round: usize,
    pub workload: String,
    pub target: String,
    pub run: Option<Run>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Median {
    pub workload: String,
    pub target: String,
    pub runs: usize,
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub latency_p99_ms: f64,
    pub failed: u64,
    /// Target CPU per 10,000 transactions, in ms (processes of ours only).
    pub cpu_ms_per_10k: Option<f64>,
    /// The pooler's cost per transaction (not for direct Postgres).
    pub per_transaction: Option<Budget>,
    /// The whole machine's CPU per transaction, in µs (every process).
    pub machine_us: Option<f64>,
}

/// Medians over rounds of what one transaction cost the pooler's process.
#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub user_us: f64,
    pub system_us: f64,
    /// `None` without perf.
    pub syscalls: Option<f64>,
    pub context_switches: f64,
}

impl Budget {
    fn of(runs: &[&Run]) -> Option<Budget> {
        let per: Vec<(Usage, f64)> =
            runs.iter().filter_map(|r| Some((r.usage?, r.transactions.max(1) as f64))).collect();
        if per.is_empty() {
            return None;
        }
        let pick = |f: &dyn Fn(&Usage) -> f64| median(&mut per.iter().map(|(u, n)| f(u) / n).collect::<Vec<_>>());
        Some(Budget {
            user_us: pick(&|u| u.user_s * 1e6),
            system_us: pick(&|u| u.system_s * 1e6),
            syscalls: per.iter().all(|(u, _)| u.syscalls.is_some()).then(|| pick(&|u| u.syscalls.unwrap_or(0) as f64)),
            context_switches: pick(&|u| (u.voluntary_switches + u.involuntary_switches) as f64),
        })
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

pub fn medians(samples: &[Sample]) -> Vec<Median> {
    let mut groups: BTreeMap<(String, String), Vec<&Run>> = BTreeMap::new();
    for s in samples {
        let runs = groups.entry((s.workload.clone(), s.target.clone())).or_default();
        if let Some(r) = &s.run {
            runs.push(r);
        }
    }
    groups
        .into_iter()
        .filter(|(_, runs)| !runs.is_empty())
        .map(|((workload, target), runs)| {
            let pick = |f: &dyn Fn(&Run) -> f64| median(&mut runs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let cpu: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    r.usage.map(|u| (u.user_s + u.system_s) * 1000.0 * 10_000.0 / r.transactions.max(1) as f64)
                })
                .collect();
            Median {
                workload,
                target,
                runs: runs.len(),
                tps: pick(&|r| r.tps),
                latency_avg_ms: pick(&|r| r.latency_avg_ms),
                latency_p99_ms: pick(&|r| r.latency_p99_ms),
                failed: runs.iter().map(|r| r.failed).sum(),
                cpu_ms_per_10k: (!cpu.is_empty()).then(|| median(&mut cpu.clone())),
                per_transaction: Budget::of(&runs),
                machine_us: {
                    let mut per: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| Some(r.machine_busy_s? * 1e6 / r.transactions.max(1) as f64))
                        .collect();
                    (!per.is_empty()).then(|| median(&mut per))
                },
            }
        })
        .collect()
}

/// shardcar's median tps over another target's, per workload.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub workload: String,
    pub shardcar: String,
    pub versus: String,
    pub ratio: f64,
}

pub fn ratios(medians: &[Median]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for m in medians.iter().filter(|m| m.target.starts_with("shardcar")) {
        for other in medians.iter().filter(|o| o.workload == m.workload && !o.target.starts_with("shardcar")) {
            out.push(Ratio {
                workload: m.workload.clone(),
                shardcar: m.target.clone(),
                versus: other.target.clone(),
                ratio: m.tps / other.tps,
            });
        }
        // TLS to the shard, against the same shardcar in clear.
        let plain = m.target.strip_suffix(" TLS");
        if let Some(other) = medians.iter().find(|o| o.workload == m.workload && Some(o.target.as_str()) == plain) {
            out.push(Ratio {
                workload: m.workload.clone(),
                shardcar: m.target.clone(),
                versus: other.target.clone(),
                ratio: m.tps / other.tps,
            });
        }
    }
    out
}

pub fn print(medians: &[Median], ratios: &[Ratio], errors: &[&Sample]) {
    println!("\nmedians per workload and target:");
    println!(
        "{:<28} {:<22} {:>10} {:>9} {:>9} {:>7} {:>12}",
        "workload", "target", "tps", "avg ms", "p99 ms", "failed", "cpu ms/10k"
    );
    for m in medians {
        let cpu = m.cpu_ms_per_10k.map_or("-".to_string(), |c| format!("{c:.0}"));
        println!(
            "{:<28} {:<22} {:>10.0} {:>9.3} {:>9.3} {:>7} {:>12}",
            m.workload, m.target, m.tps, m.latency_avg_ms, m.latency_p99_ms, m.failed, cpu
        );
    }
    println!(
        "\nper transaction, the pooler's process (medians): CPU µs in user / kernel mode, system calls (perf), context switches:"
    );
    println!(
        "{:<28} {:<22} {:>8} {:>8} {:>9} {:>9}",
        "workload", "target", "user µs", "sys µs", "syscalls", "switches"
    );
    for m in medians {
        if let Some(b) = &m.per_transaction {
            let syscalls = b.syscalls.map_or("-".to_string(), |n| format!("{n:.2}"));
            println!(
                "{:<28} {:<22} {:>8.1} {:>8.1} {:>9} {:>9.2}",
                m.workload, m.target, b.user_us, b.system_us, syscalls, b.context_switches
            );
        }
    }
    // On a box that pgbench and Postgres keep busy, tps is the cores over
    // this figure: what a pooler adds to it is what it costs in throughput,
    // its own CPU and the extra work its hop causes the others.
    println!(
        "\nthe whole machine's CPU per transaction (every process, medians), and what going through the target adds to direct:"
    );
    println!("{:<28} {:<22} {:>11} {:>9}", "workload", "target", "machine µs", "added µs");
    for m in medians {
        let Some(us) = m.machine_us else { continue };
        let direct =
            medians.iter().find(|d| d.workload == m.workload && d.target == "direct").and_then(|d| d.machine_us);
        let added = direct.filter(|_| m.target != "direct").map_or("-".to_string(), |d| format!("{:.1}", us - d));
        println!("{:<28} {:<22} {:>11.1} {:>9}", m.workload, m.target, us, added);
    }
    println!("\nratios (median tps):");
    for r in ratios {
        println!("{:<28} {:<22} / {:<18} {:>6.2}", r.workload, r.shardcar, r.versus, r.ratio);
    }
    for e in errors {
        println!("not run: {} {} (round {}): {}", e.workload, e.target, e.round, e.error.as_deref().unwrap_or("?"));
    }
}

/// Grouped bars of median tps: one group per workload, one bar per target.
pub fn chart(medians: &[Median], path: &Path) -> anyhow::Result<()> {
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .map_err(|e| anyhow::anyhow!("the chart needs DejaVuSans (fonts-dejavu-core): {e}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("cannot load the chart's font"))?;
    let workloads: Vec<String> = dedup(medians.iter().map(|m| m.workload.clone()));
    let targets: Vec<String> = dedup(medians.iter().map(|m| m.target.clone()));
    let top = medians.iter().map(|m| m.tps).fold(0.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("pgbench median tps (higher is better)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..workloads.len() as f64, 0f64..top.max(1.0))?;
    chart
        .configure_mesh()
        .x_labels(workloads.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            if (*x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                workloads.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("transactions per second")
        .draw()?;
    let width = 0.8 / targets.len().max(1) as f64;
    for (t, target) in targets.iter().enumerate() {
        let color = Palette99::pick(t).to_rgba();
        let bars = medians.iter().filter(|m| &m.target == target).filter_map(|m| {
            let w = workloads.iter().position(|x| *x == m.workload)? as f64;
            let x0 = w + 0.1 + t as f64 * width;
            Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, m.tps)], color.filled()))
        });
        chart
            .draw_series(bars)?
            .label(target.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}
