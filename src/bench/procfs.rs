//! What the load generator reads about a process from Linux's `/proc`: CPU time and peak
//! resident memory.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// Clock ticks per second of `/proc/PID/stat` times. Linux reports them in `USER_HZ`, which is
/// 100 on every architecture it exposes to user space.
const USER_HZ: f64 = 100.0;

fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// User plus system CPU seconds the process (`None`: this one) has used so far.
pub fn cpu_seconds(pid: Option<u32>) -> anyhow::Result<f64> {
    let path = proc_path(pid, "stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("{}: no command name in {stat:?}", path.display());
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{}: field {} is not a number", path.display(), i + 3))
    };
    Ok((tick(11)? + tick(12)?) as f64 / USER_HZ)
}

/// Peak resident set size in bytes (`VmHWM`) of the process (`None`: this one).
pub fn peak_rss_bytes(pid: Option<u32>) -> anyhow::Result<u64> {
    let path = proc_path(pid, "status");
    let status = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("{}: no VmHWM line", path.display()))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_own_cpu_and_peak_rss() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        assert!(peak_rss_bytes(None).unwrap() > 1 << 20);
        let me = std::process::id();
        assert!(peak_rss_bytes(Some(me)).unwrap() > 1 << 20);
    }
}
