//! What the benches' interleaved rounds share: quartiles of per-round
//! figures, the machine's load, and CPU affinity (a server on one CPU, the
//! client on another).
//!
//! Interleaved rounds are the measure of record on a shared machine: each
//! contender runs a short slice in turn, the start order rotating, so that
//! load from other processes falls on all of them alike; a ratio is taken
//! within each round, and the rounds give its median and inter-quartile
//! range.

use std::io;

/// `[first quartile, median, third quartile]` of `v` (nearest rank; `v`
/// is sorted in place). NaN for an empty `v`.
pub fn quartiles(v: &mut [f64]) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

/// `median [q1–q3]` of `v`, each with `digits` decimals.
pub fn median_iqr(v: &[f64], digits: usize) -> String {
    let [q1, m, q3] = quartiles(&mut v.to_vec());
    format!("{m:.digits$} [{q1:.digits$}–{q3:.digits$}]")
}

/// The 1, 5 and 15 minute load averages, as `uptime` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Sets the affinity of every thread of process `pid` (this process for
/// `None`) to `cpus`.
///
/// A thread takes its creator's affinity, so a thread started while this
/// runs may keep the old one: pin while the process is quiet (between
/// measurements), as the benches do.
///
/// # Errors
///
/// If the process's threads cannot be listed, or one's affinity cannot be
/// set (one that exited meanwhile is skipped).
pub fn pin_process(pid: Option<u32>, cpus: &[usize]) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_owned(),
    };
    for entry in std::fs::read_dir(dir)? {
        let tid = entry?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        let Some(tid) = tid else { continue };
        match rustix::thread::sched_setaffinity(Some(tid), &set) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_by_nearest_rank() {
        let mut v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quartiles(&mut v), [2.0, 3.0, 4.0]);
        assert_eq!(median_iqr(&[1.0, 2.0, 3.0], 1), "2.0 [2.0–3.0]");
        assert!(quartiles(&mut []).iter().all(|q| q.is_nan()));
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        pin_process(None, &cpus).unwrap();
    }
}
