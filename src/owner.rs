//! Who holds a lock: [`Owner`] metadata, its text format, and liveness.
//!
//! File locks write it into the lock file; other backends may store it beside
//! the lock. The text format is line-based and forgiving of unknown keys so
//! that newer versions can add fields:
//!
//! ```text
//! lockyard-owner 1
//! pid=4242
//! start=1763800000
//! host=build-07
//! since=2026-11-22T20:57:34.123456789Z
//! mode=exclusive
//! end
//! ```
//!
//! A line `end` ends the record: whatever follows it is ignored, so a shorter
//! record written over a longer one (file locks overwrite in place) reads
//! back cleanly. [`Owner::to_text`] does not write `end`; the lock file
//! writer appends it after any lines of its own (such as `name=`).
//!
//! Anything else — a file written by another tool, truncated, binary — is a
//! [`OwnerParseError`], never a panic.

use std::fmt;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::options::Mode;

pub(crate) const MAGIC: &str = "lockyard-owner 1";
/// Lines longer than this, or files with more lines, are refused.
const MAX_LINE: usize = 512;
const MAX_LINES: usize = 64;

/// Metadata about the holder of a lock.
///
/// Its text format is line based, forgiving of unknown keys (so newer
/// versions can add fields), and ends at an optional `end` line:
///
/// ```text
/// lockyard-owner 1
/// pid=4242
/// start=1763800000
/// host=build-07
/// since=2026-11-22T20:57:34.123456789Z
/// mode=exclusive
/// end
/// ```
///
/// ```
/// use lockyard::{Mode, Owner};
///
/// let me = Owner::current(Mode::Exclusive);
/// let text = me.to_text();
/// let back = Owner::parse(&text).unwrap();
/// assert_eq!(back.pid, std::process::id());
/// assert_eq!(back.mode, Mode::Exclusive);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Owner {
    /// Process id of the holder.
    pub pid: u32,
    /// Start time of the holder process in seconds since the Unix epoch, so a
    /// reused pid is not mistaken for the holder; `None` when unknown.
    pub start_time: Option<u64>,
    /// Host name of the holder.
    pub host: String,
    /// When the lock was acquired (wall clock).
    pub since: SystemTime,
    /// How the lock is held.
    pub mode: Mode,
}

/// Whether an owner process still runs.
///
/// ```
/// use lockyard::{Liveness, Mode, Owner};
///
/// assert_eq!(Owner::current(Mode::Exclusive).liveness(), Liveness::Alive);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// The pid runs and (where known) started when the owner says it did.
    Alive,
    /// The pid does not run, or runs with another start time (pid reuse).
    Dead,
    /// The owner is on another host: nothing can be said from here.
    Unknown,
}

/// Why owner metadata could not be parsed.
///
/// ```
/// let err = lockyard::Owner::parse("not owner metadata").unwrap_err();
/// assert!(err.to_string().starts_with("malformed owner metadata"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed owner metadata: {reason}")]
pub struct OwnerParseError {
    reason: String,
}

impl OwnerParseError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl Owner {
    /// Metadata for the calling process, acquiring now.
    ///
    /// ```
    /// use lockyard::{Mode, Owner};
    ///
    /// let me = Owner::current(Mode::Shared);
    /// assert_eq!(me.pid, std::process::id());
    /// assert_eq!(me.host, lockyard::host_name());
    /// assert_eq!(me.mode, Mode::Shared);
    /// ```
    pub fn current(mode: Mode) -> Self {
        Self {
            pid: std::process::id(),
            start_time: current_start_time(),
            host: host_name().to_owned(),
            since: SystemTime::now(),
            mode,
        }
    }

    /// Serializes to the text format shown on [`Owner`].
    ///
    /// ```
    /// use lockyard::{Mode, Owner};
    ///
    /// let me = Owner::current(Mode::Exclusive);
    /// let text = me.to_text();
    /// assert!(text.starts_with("lockyard-owner 1\n"));
    /// assert_eq!(Owner::parse(&text)?, me);
    /// # Ok::<(), lockyard::OwnerParseError>(())
    /// ```
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(128);
        s.push_str(MAGIC);
        s.push('\n');
        s.push_str(&format!("pid={}\n", self.pid));
        if let Some(start) = self.start_time {
            s.push_str(&format!("start={start}\n"));
        }
        // Host names cannot contain newlines, but be strict about what we write.
        let host: String = self.host.chars().filter(|c| !c.is_control()).collect();
        s.push_str(&format!("host={host}\n"));
        s.push_str(&format!(
            "since={}\n",
            humantime::format_rfc3339_nanos(self.since)
        ));
        s.push_str(&format!("mode={}\n", self.mode));
        s
    }

    /// Parses the text format. Unknown keys are ignored and a line `end`
    /// stops parsing; missing required keys (`pid`, `host`, `since`),
    /// duplicates, or malformed values are errors.
    ///
    /// ```
    /// use lockyard::{Mode, Owner};
    ///
    /// let text = "lockyard-owner 1\npid=4242\nhost=build-7\nsince=2026-01-02T03:04:05Z\nmode=shared\n";
    /// let owner = Owner::parse(text)?;
    /// assert_eq!((owner.pid, owner.host.as_str(), owner.mode), (4242, "build-7", Mode::Shared));
    /// assert_eq!(owner.start_time, None);
    /// assert!(Owner::parse("lockyard-owner 1\nhost=build-7\n").is_err()); // no pid
    /// # Ok::<(), lockyard::OwnerParseError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`OwnerParseError`] for a missing required key (`pid`, `host`, `since`), a duplicate key or a malformed value.
    pub fn parse(text: &str) -> Result<Self, OwnerParseError> {
        let mut lines = text.lines();
        match lines.next() {
            Some(first) if first.trim_end() == MAGIC => {}
            _ => return Err(OwnerParseError::new("missing `lockyard-owner 1` header")),
        }
        let (mut pid, mut start, mut host, mut since, mut mode) = (None, None, None, None, None);
        for (i, line) in lines.enumerate() {
            if i >= MAX_LINES {
                return Err(OwnerParseError::new("too many lines"));
            }
            if line.len() > MAX_LINE {
                return Err(OwnerParseError::new("line too long"));
            }
            if line == "end" {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| OwnerParseError::new(format!("line {} has no `=`", i + 2)))?;
            fn set<T>(slot: &mut Option<T>, v: T, key: &str) -> Result<(), OwnerParseError> {
                if slot.replace(v).is_some() {
                    return Err(OwnerParseError::new(format!("duplicate key `{key}`")));
                }
                Ok(())
            }
            match key {
                "pid" => {
                    let v = value
                        .parse::<u32>()
                        .map_err(|_| OwnerParseError::new(format!("bad pid {value:?}")))?;
                    set(&mut pid, v, key)?
                }
                "start" => {
                    let v = value
                        .parse::<u64>()
                        .map_err(|_| OwnerParseError::new(format!("bad start {value:?}")))?;
                    set(&mut start, v, key)?
                }
                "host" => {
                    if value.is_empty() || value.chars().any(char::is_control) {
                        return Err(OwnerParseError::new("bad host"));
                    }
                    set(&mut host, value.to_owned(), key)?
                }
                "since" => {
                    let v = humantime::parse_rfc3339(value)
                        .map_err(|_| OwnerParseError::new(format!("bad since {value:?}")))?;
                    set(&mut since, v, key)?
                }
                "mode" => {
                    let v = value
                        .parse::<Mode>()
                        .map_err(|_| OwnerParseError::new(format!("bad mode {value:?}")))?;
                    set(&mut mode, v, key)?
                }
                _ => {} // forward compatible
            }
        }
        Ok(Self {
            pid: pid.ok_or_else(|| OwnerParseError::new("missing pid"))?,
            start_time: start,
            host: host.ok_or_else(|| OwnerParseError::new("missing host"))?,
            since: since.ok_or_else(|| OwnerParseError::new("missing since"))?,
            mode: mode.unwrap_or_default(),
        })
    }

    /// Whether the owner process still runs (checked with `sysinfo`).
    ///
    /// A pid that runs with a start time other than the recorded one is a
    /// reused pid: [`Liveness::Dead`]. An owner on another host is
    /// [`Liveness::Unknown`].
    ///
    /// ```
    /// use lockyard::{Liveness, Mode, Owner};
    ///
    /// let mut owner = Owner::current(Mode::Exclusive);
    /// assert_eq!(owner.liveness(), Liveness::Alive);
    /// owner.host = "some-other-machine".into();
    /// assert_eq!(owner.liveness(), Liveness::Unknown);
    /// ```
    pub fn liveness(&self) -> Liveness {
        if self.host != host_name() {
            return Liveness::Unknown;
        }
        match process_start_time(self.pid) {
            None => Liveness::Dead,
            Some(actual) => match self.start_time {
                // sysinfo reports whole seconds; allow one second of rounding.
                Some(recorded) if actual.abs_diff(recorded) > 1 => Liveness::Dead,
                _ => Liveness::Alive,
            },
        }
    }

    /// How long ago the lock was taken (zero if `since` is in the future).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use lockyard::{Mode, Owner};
    ///
    /// let mut owner = Owner::current(Mode::Exclusive);
    /// owner.since = SystemTime::now() - Duration::from_secs(90);
    /// assert!(owner.age() >= Duration::from_secs(90));
    /// ```
    pub fn age(&self) -> std::time::Duration {
        SystemTime::now()
            .duration_since(self.since)
            .unwrap_or_default()
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on {} since {} ({}, {})",
            self.pid,
            crate::text::Escaped(&self.host),
            humantime::format_rfc3339_seconds(self.since),
            self.mode,
            humantime::format_duration(std::time::Duration::from_secs(self.age().as_secs()))
        )
    }
}

/// This machine's host name (cached; `"localhost"` if it cannot be read).
///
/// ```
/// let host = lockyard::host_name();
/// assert!(!host.is_empty());
/// assert_eq!(lockyard::Owner::current(lockyard::Mode::Shared).host, host);
/// ```
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| sysinfo::System::host_name().unwrap_or_else(|| "localhost".to_owned()))
}

fn current_start_time() -> Option<u64> {
    static START: OnceLock<Option<u64>> = OnceLock::new();
    *START.get_or_init(|| process_start_time(std::process::id()))
}

/// Start time (seconds since the epoch) of a running process, `None` if no
/// such process runs.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = Pid::from_u32(pid);
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    sys.process(pid).map(|p| p.start_time())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let me = Owner::current(Mode::Shared);
        assert_eq!(Owner::parse(&me.to_text()).unwrap(), me);
        assert_eq!(me.liveness(), Liveness::Alive);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "hello",
            "lockyard-owner 1\n",
            "lockyard-owner 1\npid=-1\nhost=a\nsince=2026-01-01T00:00:00Z\n",
            "lockyard-owner 1\npid=1\npid=2\nhost=a\nsince=2026-01-01T00:00:00Z\n",
            "lockyard-owner 1\npid=1\nhost=a\nsince=yesterday\n",
            "lockyard-owner 1\npid=1\nhost=a\nsince=2026-01-01T00:00:00Z\nmode=writer\n",
            "lockyard-owner 1\nnonsense\n",
        ] {
            assert!(Owner::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let text = "lockyard-owner 1\npid=7\nhost=a\nsince=2026-01-01T00:00:00Z\nfuture=1\n";
        let o = Owner::parse(text).unwrap();
        assert_eq!(o.pid, 7);
        assert_eq!(o.mode, Mode::Exclusive);
        assert_eq!(o.liveness(), Liveness::Unknown);
    }

    #[test]
    fn end_line_stops_parsing() {
        let text =
            "lockyard-owner 1\npid=7\nhost=a\nsince=2026-01-01T00:00:00Z\nend\npid=8\nnonsense\n";
        assert_eq!(Owner::parse(text).unwrap().pid, 7);
    }

    #[test]
    fn dead_and_reused_pids() {
        let mut me = Owner::current(Mode::Exclusive);
        me.start_time = me.start_time.map(|s| s - 1000);
        assert_eq!(me.liveness(), Liveness::Dead, "pid reuse not detected");
        let mut gone = Owner::current(Mode::Exclusive);
        gone.pid = u32::MAX - 1;
        assert_eq!(gone.liveness(), Liveness::Dead);
    }
}
