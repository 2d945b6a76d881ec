//! The CPU time of a process and of its backends, from `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{Context as _, Result};
use tokio::process::Command;

/// A process's CPU share, and that of its backends, over a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    /// % of one core.
    pub(crate) process_pct: f64,
    /// % of one core; `None` when the backends' processes are not visible here.
    pub(crate) backends_pct: Option<f64>,
}

/// Reads CPU times; knows the kernel's clock tick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuClock {
    ticks_per_second: f64,
}

/// The CPU seconds of a process and of its backends at an instant.
#[derive(Debug)]
pub(crate) struct CpuSnapshot {
    at: Instant,
    process: f64,
    /// The visible backends' CPU seconds, by pid.
    backends: BTreeMap<i32, f64>,
}

impl CpuClock {
    /// CPU clock ticks per second from `getconf CLK_TCK` (100 when unknown).
    pub(crate) async fn new() -> CpuClock {
        let out = Command::new("getconf").arg("CLK_TCK").output().await;
        let ticks_per_second = out
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0);
        CpuClock { ticks_per_second }
    }

    /// The CPU seconds of process `pid` and of the `backends` that are visible now.
    pub(crate) fn snapshot(&self, pid: u32, backends: &BTreeSet<i32>) -> Result<CpuSnapshot> {
        let process = self.seconds(pid)?;
        let backends = self.backends(backends);
        Ok(CpuSnapshot {
            at: Instant::now(),
            process,
            backends,
        })
    }

    /// The shares from `start` to `end` (both of the same backends), plus the whole CPU time of
    /// `newer` backends that came during the window. A backend that went away counts until
    /// `start`. When `backends` had pids but none was visible at the start (the server runs
    /// elsewhere), the backends' share is `None`.
    pub(crate) fn between(
        &self,
        start: &CpuSnapshot,
        end: &CpuSnapshot,
        backends: &BTreeSet<i32>,
        newer: &BTreeSet<i32>,
    ) -> Cpu {
        let seconds = end.at.duration_since(start.at).as_secs_f64();
        let visible = backends.is_empty() || !start.backends.is_empty();
        let backends_cpu = self.backends_seconds(start, end, newer);
        let pct = |cpu: f64| (cpu / seconds * 100.0).max(0.0);
        Cpu {
            process_pct: pct(end.process - start.process),
            backends_pct: visible.then(|| pct(backends_cpu)),
        }
    }

    /// The CPU seconds the backends of `start` used until `end`, plus the whole CPU time of
    /// `newer` backends that came meanwhile; a backend that went away counts until `start`.
    pub(crate) fn backends_seconds(
        &self,
        start: &CpuSnapshot,
        end: &CpuSnapshot,
        newer: &BTreeSet<i32>,
    ) -> f64 {
        let mut after = end.backends.clone();
        after.extend(self.backends(newer));
        after
            .iter()
            .map(|(pid, after)| after - start.backends.get(pid).copied().unwrap_or(0.0))
            .sum()
    }

    /// The CPU time of a process (all its threads), in seconds: the on-CPU nanoseconds of
    /// `/proc/<pid>/task/*/schedstat` when the kernel keeps them, else utime + stime of
    /// `/proc/<pid>/stat` (clock ticks).
    fn seconds(&self, pid: u32) -> Result<f64> {
        if let Some(nanos) = schedstat_nanos(pid) {
            return Ok(nanos as f64 / 1e9);
        }
        let (_, fields) = stat_fields(pid)?;
        // fields[0] is field 4 (ppid); utime and stime are fields 14 and 15
        let utime = fields.get(10).copied().unwrap_or(0);
        let stime = fields.get(11).copied().unwrap_or(0);
        Ok((utime + stime) as f64 / self.ticks_per_second)
    }

    /// The CPU seconds of each backend that is a visible `postgres` process; those that went
    /// away, or are not visible here (the server runs elsewhere), are left out.
    fn backends(&self, pids: &BTreeSet<i32>) -> BTreeMap<i32, f64> {
        pids.iter()
            .filter_map(|&pid| {
                let id = u32::try_from(pid).ok()?;
                let (comm, _) = stat_fields(id).ok()?;
                if !comm.starts_with("postgres") {
                    return None;
                }
                Some((pid, self.seconds(id).ok()?))
            })
            .collect()
    }
}

/// Fields of `/proc/<pid>/stat` after the command name (from field 3, `state`).
fn stat_fields(pid: u32) -> Result<(String, Vec<u64>)> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let open = text
        .find('(')
        .with_context(|| format!("{path}: no command name"))?;
    let close = text
        .rfind(')')
        .with_context(|| format!("{path}: no command name"))?;
    let comm = text[open + 1..close].to_owned();
    let fields = text[close + 1..]
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect();
    Ok((comm, fields))
}

/// The summed on-CPU nanoseconds of a process's threads, when every one can be read.
fn schedstat_nanos(pid: u32) -> Option<u64> {
    let mut sum = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        sum += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_process_uses_cpu() -> Result<()> {
        let clock = CpuClock::new().await;
        let pid = std::process::id();
        let start = clock.snapshot(pid, &BTreeSet::new())?;
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let mut spins = 0_u64;
        while Instant::now() < deadline {
            spins = std::hint::black_box(spins + 1);
        }
        let end = clock.snapshot(pid, &BTreeSet::new())?;
        let cpu = clock.between(&start, &end, &BTreeSet::new(), &BTreeSet::new());
        assert!(
            cpu.process_pct > 0.0 && cpu.process_pct.is_finite(),
            "{cpu:?}"
        );
        assert_eq!(cpu.backends_pct, Some(0.0));
        Ok(())
    }
}
