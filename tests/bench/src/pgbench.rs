//! One pgbench run and what it reports: tps, average latency, and p99 from
//! its per-transaction log.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;
use shardcar::localpg;

use crate::targets::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Script {
    /// `-S`: one SELECT by primary key per transaction.
    SelectOnly,
    /// The built-in TPC-B-like script.
    TpcB,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub script: Script,
    /// `-M simple|extended|prepared`
    pub mode: &'static str,
    pub clients: usize,
}

impl Workload {
    pub fn label(&self) -> String {
        let script = match self.script {
            Script::SelectOnly => "select-only",
            Script::TpcB => "tpc-b",
        };
        format!("{script} {} c{}", self.mode, self.clients)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub latency_p99_ms: f64,
    pub transactions: u64,
    pub failed: u64,
    /// What the target's process used during the run (poolers only).
    pub usage: Option<Usage>,
    /// CPU seconds the whole machine was busy during the run (every process:
    /// pgbench, Postgres, the pooler), from `/proc/stat`.
    pub machine_busy_s: Option<f64>,
}

/// Seconds every CPU of the machine has been busy since boot: all time in
/// `/proc/stat`'s `cpu` line but idle and iowait.
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let (idle, iowait) = (*ticks.get(3)?, *ticks.get(4)?);
    // guest and guest_nice (9th, 10th) are already counted in user and nice.
    let total: u64 = ticks.iter().take(8).sum();
    Some((total - idle - iowait) as f64 / ticks_per_s())
}

/// The unit of `/proc`'s CPU times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// A process's use of the machine: CPU seconds in user and kernel mode and
/// context switches summed over its threads (from `/proc`), and system
/// calls of every kind (counted by `perf stat` on the `raw_syscalls`
/// tracepoint; `None` where perf or the tracepoint is not available).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub user_s: f64,
    pub system_s: f64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub syscalls: Option<u64>,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let hz = ticks_per_s();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).map(|t| t / hz);
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim_start_matches([':', ' ', '\t']).parse().ok())
                .unwrap_or(0)
        };
        let mut usage = Usage { user_s: ticks(11)?, system_s: ticks(12)?, ..Usage::default() };
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            usage.voluntary_switches += field(&status, "voluntary_ctxt_switches");
            usage.involuntary_switches += field(&status, "nonvoluntary_ctxt_switches");
        }
        Some(usage)
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            user_s: self.user_s - before.user_s,
            system_s: self.system_s - before.system_s,
            // Threads that ended during the run take their counts with them.
            voluntary_switches: self.voluntary_switches.saturating_sub(before.voluntary_switches),
            involuntary_switches: self.involuntary_switches.saturating_sub(before.involuntary_switches),
            syscalls: None,
        }
    }
}

/// `perf stat` counting a process's system calls until stopped.
struct SyscallCount {
    perf: std::process::Child,
    out: std::path::PathBuf,
}

impl SyscallCount {
    fn start(pid: u32, out: std::path::PathBuf) -> Option<SyscallCount> {
        let perf = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(SyscallCount { perf, out })
    }

    /// Stops perf (SIGINT makes it write its count) and reads the count.
    fn stop(mut self) -> Option<u64> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(i32::try_from(self.perf.id()).ok()?, libc::SIGINT) };
        // perf exits with 130 after SIGINT, its count written.
        self.perf.wait().ok()?;
        let text = std::fs::read_to_string(&self.out).ok()?;
        let _ = std::fs::remove_file(&self.out);
        text.lines().find(|l| l.contains("raw_syscalls:sys_enter"))?.split(',').next()?.parse().ok()
    }
}

pub fn run(target: &Target, w: &Workload, seconds: u64, logs: &Path) -> anyhow::Result<Run> {
    let prefix = logs.join(format!("{}-{}", target.name.replace(' ', "_"), w.label().replace(' ', "_")));
    let mut cmd = Command::new(localpg::tool("pgbench")?);
    cmd.args(["-n", "-h", "127.0.0.1", "-U", &target.user, "-M", w.mode]);
    cmd.args(["-p", &target.port.to_string(), "-T", &seconds.to_string()]);
    cmd.args(["-c", &w.clients.to_string(), "-j", &w.clients.min(2).to_string()]);
    cmd.args(["--log", "--sampling-rate", "0.1"]).arg(format!("--log-prefix={}", prefix.display()));
    if w.script == Script::SelectOnly {
        cmd.arg("-S");
    }
    cmd.arg(localpg::DATABASE);
    // Clients in clear everywhere: with `--shard-tls` the shard offers TLS,
    // and libpq's default (prefer) would take it when pgbench goes direct.
    cmd.env("PGSSLMODE", "disable");
    if let Some(pw) = &target.password {
        cmd.env("PGPASSWORD", pw);
    }
    let before = target.pid().and_then(Usage::of);
    let busy_before = machine_busy_s();
    let syscalls = target.pid().and_then(|pid| SyscallCount::start(pid, prefix.with_extension("perf")));
    let out = cmd.output().context("run pgbench")?;
    let syscalls = syscalls.and_then(SyscallCount::stop);
    let after = target.pid().and_then(Usage::of);
    let busy = busy_before.zip(machine_busy_s()).map(|(b, a)| a - b);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let why = text.lines().find(|l| l.contains("error")).unwrap_or("pgbench failed");
        bail!("{why}");
    }
    let value = |label: &str| -> anyhow::Result<f64> {
        let line = text.lines().find(|l| l.starts_with(label)).with_context(|| format!("no `{label}` in:\n{text}"))?;
        let rest = line[label.len()..].trim_start_matches([' ', '=', ':']);
        rest.split_whitespace().next().and_then(|v| v.parse().ok()).with_context(|| format!("cannot read {line}"))
    };
    let p99 = p99_from_logs(logs, &prefix)?;
    Ok(Run {
        tps: value("tps")?,
        latency_avg_ms: value("latency average")?,
        latency_p99_ms: p99,
        transactions: value("number of transactions actually processed")? as u64,
        failed: value("number of failed transactions").unwrap_or(0.0) as u64,
        usage: before.zip(after).map(|(b, a)| Usage { syscalls, ..a.since(b) }),
        machine_busy_s: busy,
    })
}

/// The 99th percentile of transaction latency in pgbench's logs (µs in the
/// third column), in ms; the log files are removed afterwards.
fn p99_from_logs(dir: &Path, prefix: &Path) -> anyhow::Result<f64> {
    let stem = prefix.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.starts_with(&format!("{stem}.")) {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()) {
                latencies.push(us);
            }
        }
        std::fs::remove_file(&path)?;
    }
    if latencies.is_empty() {
        return Ok(f64::NAN);
    }
    latencies.sort_unstable();
    let at = ((latencies.len() as f64) * 0.99).ceil() as usize;
    Ok(latencies[at.clamp(1, latencies.len()) - 1] as f64 / 1000.0)
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
