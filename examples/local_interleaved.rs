//! The contended RW-lock mix of `benches/local.rs`, with lockyard, tokio and
//! async-lock *interleaved* run by run (the order rotating), so that a
//! change in the machine's load hits all three alike; prints the median
//! time of each and the median of the per-round ratios.
//!
//! ```text
//! cargo run --release --example local_interleaved -- <one write in N> <workers> <rounds>
//! cargo run --release --example local_interleaved -- 8 2 300
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TASKS: usize = 64;
const ROUNDS: usize = 100;

fn work() {
    let mut x = 0u64;
    for i in 0..50 {
        x = black_box(x.wrapping_add(i));
    }
    black_box(x);
}

/// One run: `TASKS` tasks, each `ROUNDS` times reading (with `work` inside)
/// or, one time in `n`, writing.
macro_rules! run {
    ($rt:expr, $lock:expr, $n:expr) => {{
        let lock = Arc::clone(&$lock);
        let n = $n;
        $rt.block_on(async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let lock = Arc::clone(&lock);
                    tokio::spawn(async move {
                        for _ in 0..ROUNDS {
                            if rand::random_ratio(1, n) {
                                *lock.write().await += 1;
                            } else {
                                black_box(*lock.read().await);
                                work();
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            start.elapsed()
        })
    }};
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().ok());
    let n = args.next().flatten().unwrap_or(8) as u32;
    let workers = args.next().flatten().unwrap_or(2) as usize;
    let rounds = args.next().flatten().unwrap_or(200) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("runtime");
    let ours = Arc::new(lockyard::local::RwLock::new(0u64));
    let theirs = Arc::new(tokio::sync::RwLock::new(0u64));
    let al = Arc::new(async_lock::RwLock::new(0u64));
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for round in 0..rounds {
        let mut times = [0.0; 3];
        for k in 0..3 {
            let which = (round + k) % 3;
            times[which] = us(match which {
                0 => run!(rt, ours, n),
                1 => run!(rt, theirs, n),
                _ => run!(rt, al, n),
            });
        }
        a.push(times[0]);
        b.push(times[1]);
        c.push(times[2]);
    }
    let mut r_tokio: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    let mut r_al: Vec<f64> = a.iter().zip(&c).map(|(x, y)| x / y).collect();
    println!(
        "1 write in {n}, {workers} workers, {rounds} rounds: lockyard {:.0} µs, tokio {:.0} µs, async_lock {:.0} µs (medians); lockyard/tokio {:.2}, lockyard/async_lock {:.2} (median of per-round ratios)",
        median(&mut a),
        median(&mut b),
        median(&mut c),
        median(&mut r_tokio),
        median(&mut r_al)
    );
}
