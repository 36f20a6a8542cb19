//! Several processes ask for the same "model" at once: exactly one produces
//! it while the others wait for the lock and then reuse it. A producer killed
//! half-way leaves no partial model visible: it writes to a temporary file
//! and renames it into place only when complete.
//!
//! Run: `cargo run --example model_cache`. It first runs a producer that
//! kills itself (SIGKILL) half-way, then four workers at once.
//!
//! The same scenario runs as a test under `cargo test --examples`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lockyard::{FileLockManager, LockError};

const MODEL: &str = "tiny-llm-v1";
const CHUNKS: usize = 20;
const CHUNK: &[u8] = b"0123456789abcdef\n";

/// Returns the model's path, producing it if nobody has yet. `Ok(true)` when
/// this call produced it.
async fn get_model(
    cache: &Path,
    locks: &FileLockManager,
    crash_half_way: bool,
) -> Result<(PathBuf, bool), LockError> {
    let target = cache.join(MODEL);
    if target.exists() {
        return Ok((target, false)); // complete models are only ever renamed in
    }
    let _guard = locks
        .acquire(&format!("model/{MODEL}"), Duration::from_secs(30))
        .await?;
    if target.exists() {
        return Ok((target, false)); // produced while we waited
    }
    // We hold the lock: partial files left by a crashed producer are ours to
    // remove.
    for entry in fs::read_dir(cache).map_err(|e| io_err(cache, e))? {
        let entry = entry.map_err(|e| io_err(cache, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".{MODEL}.partial"))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
    let tmp = cache.join(format!(".{MODEL}.partial-{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    for i in 0..CHUNKS {
        // "Downloading".
        tokio::time::sleep(Duration::from_millis(10)).await;
        f.write_all(CHUNK).map_err(|e| io_err(&tmp, e))?;
        if crash_half_way && i == CHUNKS / 2 {
            f.flush().map_err(|e| io_err(&tmp, e))?;
            println!("producer {}: dying half-way", std::process::id());
            kill_self();
        }
    }
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &target).map_err(|e| io_err(&target, e))?;
    Ok((target, true))
}

fn io_err(path: &Path, source: std::io::Error) -> LockError {
    LockError::Io {
        op: "write model",
        path: path.to_owned(),
        source,
    }
}

fn kill_self() -> ! {
    #[cfg(unix)]
    // SAFETY: kill with our own pid and a valid signal number.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// A worker process: env `MODEL_CACHE_DIR`, optional `MODEL_CACHE_CRASH`.
fn worker() {
    let dir = PathBuf::from(std::env::var("MODEL_CACHE_DIR").expect("MODEL_CACHE_DIR"));
    let crash = std::env::var_os("MODEL_CACHE_CRASH").is_some();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cache = dir.join("models");
        let locks = FileLockManager::new(dir.join("locks")).expect("lock dir");
        let (path, produced) = get_model(&cache, &locks, crash).await.expect("model");
        let bytes = fs::read(&path).expect("read model");
        assert_eq!(
            bytes.len(),
            CHUNKS * CHUNK.len(),
            "incomplete model visible"
        );
        println!(
            "worker {}: {} {}",
            std::process::id(),
            if produced { "PRODUCED" } else { "REUSED" },
            path.display()
        );
    });
}

/// Runs the whole scenario; `worker_cmd` starts one worker process.
fn scenario(worker_cmd: &dyn Fn() -> Command) {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::create_dir(dir.path().join("models")).expect("models dir");
    let run = |crash: bool| {
        let mut cmd = worker_cmd();
        cmd.env("MODEL_CACHE_DIR", dir.path())
            .stdout(Stdio::piped());
        if crash {
            cmd.env("MODEL_CACHE_CRASH", "1");
        }
        cmd.spawn().expect("spawn worker")
    };

    // 1. A producer dies half-way: no model becomes visible.
    let out = run(true).wait_with_output().expect("crashing worker");
    assert!(!out.status.success(), "the crashing producer survived");
    let model = dir.path().join("models").join(MODEL);
    assert!(!model.exists(), "a partial model is visible");
    println!("after the crash: no model, only a partial temp file (invisible to readers)");

    // 2. Four workers at once: one produces, three wait and reuse.
    let workers: Vec<_> = (0..4).map(|_| run(false)).collect();
    let mut produced = 0;
    for w in workers {
        let out = w.wait_with_output().expect("worker");
        let text = String::from_utf8_lossy(&out.stdout);
        print!(
            "{}",
            text.lines()
                .filter(|l| l.starts_with("worker"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        assert!(out.status.success(), "worker failed: {text}");
        produced += text.matches("PRODUCED").count();
    }
    assert_eq!(produced, 1, "exactly one worker must produce the model");
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("models"))
        .expect("models dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, [MODEL], "partial files left behind");
    println!("one producer, three reusers, no partial files left");
}

fn main() {
    if std::env::var_os("MODEL_CACHE_DIR").is_some() {
        return worker();
    }
    let exe = std::env::current_exe().expect("current exe");
    scenario(&|| Command::new(&exe));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In the test binary, workers re-enter through this test.
    #[test]
    fn worker_entry() {
        if std::env::var_os("MODEL_CACHE_DIR").is_some() {
            worker();
            std::process::exit(0);
        }
    }

    #[test]
    fn one_producer_and_no_partial_model() {
        let exe = std::env::current_exe().expect("current exe");
        scenario(&|| {
            let mut c = Command::new(&exe);
            c.args([
                "tests::worker_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ]);
            c
        });
    }
}
