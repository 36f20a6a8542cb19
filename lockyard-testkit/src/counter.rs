//! A shared counter in plain files, for mutual-exclusion tests across
//! processes: workers increment it with a deliberate read–pause–write race
//! (only the lock keeps two of them apart) and log the fencing token of
//! each increment; the test then checks that no increment was lost and
//! that the tokens strictly increased across processes.
//!
//! The counter lives in a directory the test owns ([`SharedCounter::new`]);
//! a worker in a child process reopens it by path ([`SharedCounter::at`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The counter file and the fencing-token log, in one directory.
#[derive(Debug)]
pub struct SharedCounter {
    dir: PathBuf,
    /// Keeps the directory while the test's counter lives.
    _owned: Option<tempfile::TempDir>,
}

impl SharedCounter {
    /// A new counter at 0 with an empty token log, in a temporary directory
    /// removed when this is dropped.
    pub fn new() -> SharedCounter {
        let owned = tempfile::tempdir().expect("temporary directory");
        let dir = owned.path().to_path_buf();
        std::fs::write(dir.join("counter"), "0").expect("write the counter");
        std::fs::write(dir.join("fences"), "").expect("write the token log");
        SharedCounter {
            dir,
            _owned: Some(owned),
        }
    }

    /// The counter a test made with [`SharedCounter::new`], by its
    /// directory (a worker's view: dropping it removes nothing).
    pub fn at(dir: impl Into<PathBuf>) -> SharedCounter {
        SharedCounter {
            dir: dir.into(),
            _owned: None,
        }
    }

    /// The directory to hand to workers.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counter's value.
    pub fn value(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("counter"))
            .expect("read the counter")
            .trim()
            .parse()
            .expect("the counter holds a number")
    }

    /// One increment under a lock whose fencing token is `fence` (logged
    /// when given): read, pause 200 µs to widen the window a second writer
    /// would need, write.
    pub async fn increment(&self, fence: Option<u64>) {
        let v = self.value();
        tokio::time::sleep(Duration::from_micros(200)).await;
        std::fs::write(self.dir.join("counter"), (v + 1).to_string()).expect("write the counter");
        if let Some(fence) = fence {
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join("fences"))
                .expect("open the token log");
            writeln!(log, "{fence}").expect("log the token");
        }
    }

    /// Asserts that the counter reached `expected` (no increment lost) and
    /// that the `expected` logged tokens strictly increase.
    pub fn assert_complete(&self, expected: u64) {
        assert_eq!(self.value(), expected, "lost updates");
        let fences: Vec<u64> = std::fs::read_to_string(self.dir.join("fences"))
            .expect("read the token log")
            .lines()
            .map(|l| l.parse().expect("a token"))
            .collect();
        assert_eq!(fences.len() as u64, expected, "tokens logged");
        assert!(
            fences.windows(2).all(|w| w[0] < w[1]),
            "fencing tokens must strictly increase across processes: {fences:?}"
        );
    }
}

impl Default for SharedCounter {
    fn default() -> Self {
        SharedCounter::new()
    }
}
