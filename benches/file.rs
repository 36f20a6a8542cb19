//! File locks against their floors, in the same run.
//!
//! 1. `uncontended/*`: one acquire + release of a free lock. Floor: raw
//!    `open + flock + unlock + close` with `std::fs::File` on a fresh open
//!    each iteration (what a careful hand-written lock does).
//! 2. `handoff_same_cpu/*`, `handoff_cross_cpu/*`: cross-process hand-off
//!    latency. The bench process holds the lock; a child process (this
//!    binary re-executed, see `child`) is told to acquire it and blocks; the
//!    parent waits until `/proc/locks` shows the child blocked in the kernel,
//!    takes a `CLOCK_MONOTONIC` timestamp `t0` and releases. The child takes
//!    its own `CLOCK_MONOTONIC` timestamp `t1` at the instant its acquire
//!    *returns* and sends it back; `t1 - t0` is measured (the clock is shared
//!    by the two processes, so no pipe wake-up is included). Floor: both
//!    sides raw `flock` on descriptors kept open (the kernel's own
//!    hand-off). A sample where the child was not yet blocked when the lock
//!    was released (it found the lock free) is discarded in both variants.
//!    Each placement pins the parent to CPU 0 and the child (with its
//!    threads) to CPU 0 (`same_cpu`) or CPU 1 (`cross_cpu`, skipped on a
//!    single CPU). Besides criterion's mean-based figures, the p50 of
//!    individual hand-offs is printed with the ratio for each placement.
//!
//! 3. With `LOCKYARD_BENCH_AB=1`, only the uncontended figures, in
//!    alternating batches (robust on a shared, loaded machine): the median
//!    batch of the raw floor, of a floor doing by hand the system calls
//!    lockyard's contract needs (open, flock, the identity check, the record
//!    write, unlock, close), and of lockyard, with both ratios.
//! 4. With `LOCKYARD_BENCH_HANDOFF=N`, only the hand-offs, interleaved one
//!    raw and one lockyard at a time, `N` samples of each per placement:
//!    the p50s and their ratio.
//!
//! The lock directory is a temporary one in `$LOCKYARD_BENCH_DIR` if set
//! (say a tmpfs, where the owner record costs no journal update), else in
//! the system's temporary directory.
//!
//! Run: `cargo bench --bench file -- --warm-up-time 1 --measurement-time 3`

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::Criterion;
use lockyard::{AcquireOptions, FileLockManager, Mode};
use std::hint::black_box;

const CHILD: &str = "LOCKYARD_BENCH_CHILD";
const T: Duration = Duration::from_secs(10);

fn main() {
    if let Ok(role) = std::env::var(CHILD) {
        if let Some(cpu) = std::env::var("LOCKYARD_BENCH_CPU")
            .ok()
            .and_then(|c| c.parse().ok())
        {
            pin_to(cpu);
        }
        child(&role);
        return;
    }
    if std::env::var_os("LOCKYARD_BENCH_AB").is_some() {
        interleaved_uncontended();
        return;
    }
    // Counted before anything is pinned (pinning narrows what it reports).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(n) = std::env::var("LOCKYARD_BENCH_HANDOFF")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        interleaved_handoff("handoff_same_cpu", 0, n);
        if cpus > 1 {
            interleaved_handoff("handoff_cross_cpu", 1, n);
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    uncontended(&mut c);
    handoff(&mut c, "handoff_same_cpu", 0);
    if cpus > 1 {
        handoff(&mut c, "handoff_cross_cpu", 1);
    }
    c.final_summary();
}

/// Pins the calling thread (and the threads it starts later) to `cpu`
/// (Linux; elsewhere nothing).
fn pin_to(cpu: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: the cpu_set_t is zero-initialised and only manipulated by the
    // libc macros; sched_setaffinity(0, ..) applies to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for both processes.
fn mono_ns() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: clock_gettime writes a timespec we own.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: as above; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    #[cfg(not(unix))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// A fresh temporary directory, in `$LOCKYARD_BENCH_DIR` if set.
fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("LOCKYARD_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

fn uncontended(c: &mut Criterion) {
    let dir = tempdir();
    let rt = runtime();
    let m = FileLockManager::new(dir.path().join("locks")).unwrap();
    let raw_path = m.dir().join("raw.lock");
    let mut g = c.benchmark_group("uncontended");
    g.bench_function("raw_open_flock_unlock_close", |b| {
        b.iter(|| {
            let f = open(&raw_path);
            f.lock().unwrap();
            f.unlock().unwrap();
            drop(black_box(f));
        })
    });
    g.bench_function("lockyard_acquire_release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = m.acquire("bench", T).await.unwrap();
            drop(black_box(guard));
        })
    });
    g.bench_function("lockyard_try_acquire_release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = m.try_acquire("bench").await.unwrap();
            drop(black_box(guard));
        })
    });
    let handle = m.lock("bench").unwrap();
    g.bench_function("lockyard_handle_acquire_release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = handle.acquire(&AcquireOptions::exclusive()).await.unwrap();
            drop(black_box(guard));
        })
    });
    g.bench_function("lockyard_acquire_shared_release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = m.acquire_shared("bench", T).await.unwrap();
            drop(black_box(guard));
        })
    });
    g.finish();
}

/// The floor lockyard's uncontended acquire + release is held to: the
/// system calls its contract needs, by hand, on a fresh open each time:
/// open (no symbolic link followed, close-on-exec), flock, the identity
/// check (the descriptor's device and inode against the path's), the owner
/// record written at offset 0, unlock, close.
#[cfg(unix)]
fn by_hand(path: &Path, record: &[u8]) {
    use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .unwrap();
    f.lock().unwrap();
    let (fd, at) = (
        f.metadata().unwrap(),
        std::fs::symlink_metadata(path).unwrap(),
    );
    assert_eq!((fd.dev(), fd.ino()), (at.dev(), at.ino()));
    f.write_all_at(record, 0).unwrap();
    f.unlock().unwrap();
    drop(black_box(f));
}

/// `LOCKYARD_BENCH_AB=1`: the uncontended floors and lockyard in alternating
/// batches of 1000 (so that load from other processes on a shared machine
/// hits all alike), printing the median batch of each and the ratios.
fn interleaved_uncontended() {
    let dir = tempdir();
    let rt = runtime();
    let m = FileLockManager::new(dir.path().join("locks")).unwrap();
    let raw_path = m.dir().join("raw.lock");
    let hand_path = m.dir().join("hand.lock");
    let record = lockyard::Owner::current(Mode::Exclusive).to_text() + "name=bench\nend\n";
    let (mut raw, mut hand, mut ly) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        for _ in 0..1000 {
            let f = open(&raw_path);
            f.lock().unwrap();
            f.unlock().unwrap();
            drop(black_box(f));
        }
        raw.push(t.elapsed() / 1000);
        #[cfg(unix)]
        {
            let t = Instant::now();
            for _ in 0..1000 {
                by_hand(&hand_path, record.as_bytes());
            }
            hand.push(t.elapsed() / 1000);
        }
        let t = Instant::now();
        rt.block_on(async {
            for _ in 0..1000 {
                let guard = m.acquire("bench", T).await.unwrap();
                drop(black_box(guard));
            }
        });
        ly.push(t.elapsed() / 1000);
    }
    raw.sort();
    hand.sort();
    ly.sort();
    let median = |v: &[Duration]| v.get(v.len() / 2).copied().unwrap_or_default();
    let (r, h, l) = (median(&raw), median(&hand), median(&ly));
    println!(
        "uncontended, interleaved medians: lockyard acquire+release {l:?}; \
         by hand (open+flock+identity check+record write+unlock+close) {h:?}, ratio {:.2}; \
         raw open+flock+unlock+close {r:?}, ratio {:.2}",
        l.as_secs_f64() / h.as_secs_f64(),
        l.as_secs_f64() / r.as_secs_f64()
    );
}

/// One side of the hand-off: how the parent and the child lock.
trait Side {
    fn hold(&mut self);
    fn release(&mut self);
}

struct RawSide(File);

impl Side for RawSide {
    fn hold(&mut self) {
        self.0.lock().unwrap();
    }
    fn release(&mut self) {
        self.0.unlock().unwrap();
    }
}

struct LockyardSide {
    rt: tokio::runtime::Runtime,
    m: FileLockManager,
    guard: Option<lockyard::FileLockGuard>,
}

impl Side for LockyardSide {
    fn hold(&mut self) {
        let g = self.rt.block_on(self.m.acquire("handoff", T)).unwrap();
        self.guard = Some(g);
    }
    fn release(&mut self) {
        drop(self.guard.take());
    }
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Peer {
    fn spawn(role: &str, dir: &Path, cpu: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, role)
            .env("DIR", dir)
            .env("LOCKYARD_BENCH_CPU", cpu.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// One measured hand-off; `None` if the child was not blocked in time.
    fn handoff(&mut self, me: &mut dyn Side, lock_file: &Path) -> Option<Duration> {
        self.stdin.write_all(b"g").unwrap();
        self.stdin.flush().unwrap();
        wait_until_blocked(lock_file);
        let t0 = mono_ns();
        me.release();
        let mut b = [0u8; 9];
        self.stdout.read_exact(&mut b).unwrap();
        let t1 = u64::from_le_bytes(b[1..].try_into().unwrap());
        me.hold(); // the child releases right after answering
        (b[0] == b'a').then(|| Duration::from_nanos(t1.saturating_sub(t0)))
    }
}

/// Waits until some process is blocked in `flock` on `lock_file`: on Linux,
/// until `/proc/locks` shows a waiter (`->`) for its inode (at most 200 ms);
/// elsewhere, 1 ms.
fn wait_until_blocked(lock_file: &Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(lock_file).unwrap().ino();
        let needle = format!(":{ino} ");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            if locks
                .lines()
                .any(|l| l.contains("->") && l.contains(&needle))
            {
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = lock_file;
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `LOCKYARD_BENCH_HANDOFF=N`: `N` hand-offs of each kind, alternating one
/// raw and one lockyard, printing the p50s and the ratio.
fn interleaved_handoff(group: &str, child_cpu: usize, n: usize) {
    pin_to(0);
    let dir = tempdir();
    let locks = dir.path().join("locks");
    let m = FileLockManager::new(&locks).unwrap();
    let raw_path = m.dir().join("handoff-raw.lock");
    let mut raw = RawSide(open(&raw_path));
    raw.hold();
    let mut raw_peer = Peer::spawn("raw", &locks, child_cpu);
    let ly_path = m.path_for("handoff").unwrap();
    let mut ly = LockyardSide {
        rt: runtime(),
        m: m.clone(),
        guard: None,
    };
    ly.hold();
    let mut ly_peer = Peer::spawn("lockyard", &locks, child_cpu);
    let (mut raw_alt, mut ly_alt) = (Vec::new(), Vec::new());
    while raw_alt.len() < n || ly_alt.len() < n {
        if let Some(d) = raw_peer.handoff(&mut raw, &raw_path) {
            raw_alt.push(d);
        }
        if let Some(d) = ly_peer.handoff(&mut ly, &ly_path) {
            ly_alt.push(d);
        }
    }
    raw_alt.sort();
    ly_alt.sort();
    let q = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let (r, l) = (q(&raw_alt, 0.5), q(&ly_alt, 0.5));
    println!(
        "{group} interleaved p50: raw flock {r:?}, lockyard {l:?}, ratio {:.2} \
         (p90: raw {:?}, lockyard {:?}; {} + {} samples)",
        l.as_secs_f64() / r.as_secs_f64(),
        q(&raw_alt, 0.9),
        q(&ly_alt, 0.9),
        raw_alt.len(),
        ly_alt.len()
    );
    drop((raw_peer, ly_peer));
    raw.release();
    ly.release();
}

fn handoff(c: &mut Criterion, group: &str, child_cpu: usize) {
    pin_to(0);
    let dir = tempdir();
    let locks = dir.path().join("locks");
    let m = FileLockManager::new(&locks).unwrap();
    let raw_path = m.dir().join("handoff-raw.lock");
    let samples: Mutex<Vec<(&str, Duration)>> = Mutex::new(Vec::new());

    let mut g = c.benchmark_group(group);
    g.sample_size(20);
    g.measurement_time(Duration::from_millis(400));
    g.warm_up_time(Duration::from_millis(100));

    let mut raw = RawSide(open(&raw_path));
    raw.hold();
    let mut raw_peer = Peer::spawn("raw", &locks, child_cpu);
    let ly_path = m.path_for("handoff").unwrap();
    let mut ly = LockyardSide {
        rt: runtime(),
        m: m.clone(),
        guard: None,
    };
    ly.hold();
    let mut ly_peer = Peer::spawn("lockyard", &locks, child_cpu);

    g.bench_function("raw_flock", |b| {
        b.iter_custom(|iters| measure(iters, &mut raw_peer, &mut raw, &raw_path, "raw", &samples))
    });
    g.bench_function("lockyard", |b| {
        b.iter_custom(|iters| measure(iters, &mut ly_peer, &mut ly, &ly_path, "lockyard", &samples))
    });
    g.finish();

    // The same pair, alternating one hand-off of each: load from other
    // processes on a shared machine then hits both alike.
    let (mut raw_alt, mut ly_alt) = (Vec::new(), Vec::new());
    while raw_alt.len() < 2000 || ly_alt.len() < 2000 {
        if let Some(d) = raw_peer.handoff(&mut raw, &raw_path) {
            raw_alt.push(d);
        }
        if let Some(d) = ly_peer.handoff(&mut ly, &ly_path) {
            ly_alt.push(d);
        }
    }
    raw_alt.sort();
    ly_alt.sort();
    let (r, l) = (raw_alt[raw_alt.len() / 2], ly_alt[ly_alt.len() / 2]);
    println!(
        "{group} interleaved p50: raw flock {r:?}, lockyard {l:?}, ratio {:.2}",
        l.as_secs_f64() / r.as_secs_f64()
    );
    drop((raw_peer, ly_peer));
    raw.release();
    ly.release();

    let samples = samples.into_inner().unwrap();
    let p = |who: &str, q: f64| {
        let mut v: Vec<Duration> = samples.iter().filter(|s| s.0 == who).map(|s| s.1).collect();
        v.sort();
        v.get(((v.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let (raw50, ly50) = (p("raw", 0.5), p("lockyard", 0.5));
    println!(
        "{group} p50: raw flock {raw50:?}, lockyard {ly50:?}, ratio {:.2} \
         (p90: raw {:?}, lockyard {:?}; {} samples)",
        ly50.as_secs_f64() / raw50.as_secs_f64(),
        p("raw", 0.9),
        p("lockyard", 0.9),
        samples.len()
    );
}

fn measure(
    iters: u64,
    peer: &mut Peer,
    me: &mut dyn Side,
    lock_file: &Path,
    who: &'static str,
    samples: &Mutex<Vec<(&'static str, Duration)>>,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    let mut misses = 0;
    while done < iters {
        match peer.handoff(me, lock_file) {
            Some(d) => {
                total += d;
                done += 1;
                samples.lock().unwrap().push((who, d));
            }
            None => {
                misses += 1;
                assert!(misses < 1000 + iters, "the child is never blocked in time");
            }
        }
    }
    total
}

/// The child: on each `g` from stdin, acquire (reporting `a` if it had to
/// block, `u` if the lock was already free), answer, release.
fn child(role: &str) {
    let dir = PathBuf::from(std::env::var("DIR").unwrap());
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut go = [0u8; 1];
    match role {
        "raw" => {
            let f = open(&dir.join("handoff-raw.lock"));
            while stdin.read_exact(&mut go).is_ok() {
                let answer = match f.try_lock() {
                    Ok(()) => b'u',
                    Err(_) => {
                        f.lock().unwrap();
                        b'a'
                    }
                };
                let t1 = mono_ns();
                stdout.write_all(&reply(answer, t1)).unwrap();
                stdout.flush().unwrap();
                f.unlock().unwrap();
            }
        }
        "lockyard" => {
            let rt = runtime();
            let m = FileLockManager::new(&dir).unwrap();
            let lock = m.lock("handoff").unwrap();
            let opts = AcquireOptions::new().mode(Mode::Exclusive);
            while stdin.read_exact(&mut go).is_ok() {
                let (guard, answer, t1) = rt.block_on(async {
                    match m.try_acquire("handoff").await {
                        Ok(g) => (g, b'u', mono_ns()),
                        Err(_) => {
                            let g = lock.acquire(&opts).await.unwrap();
                            (g, b'a', mono_ns())
                        }
                    }
                });
                stdout.write_all(&reply(answer, t1)).unwrap();
                stdout.flush().unwrap();
                drop(guard);
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// The child's answer: `a` (it blocked) or `u`, then the instant its
/// acquire returned.
fn reply(answer: u8, t1: u64) -> [u8; 9] {
    let mut r = [answer; 9];
    r[1..].copy_from_slice(&t1.to_le_bytes());
    r
}
