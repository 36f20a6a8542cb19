//! Runs one uncontended path of the in-process primitives (or of tokio's,
//! for comparison) `n` times, for counting instructions under callgrind,
//! which, unlike wall time, repeats exactly from run to run:
//!
//! ```text
//! cargo build --release --example local_instructions
//! for path in sem_acquire tokio_sem_acquire; do
//!   for n in 0 100000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       target/release/examples/local_instructions $path $n 2>&1 | grep refs
//!   done
//! done
//! ```
//!
//! (instructions at 100000 − instructions at 0) / 100000 is the cost of
//! one acquire-and-release.

use std::hint::black_box;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let ours = lockyard::local::Semaphore::new(1);
    let theirs = tokio::sync::Semaphore::new(1);
    let our_rw = lockyard::local::RwLock::new(0u64);
    let their_rw = tokio::sync::RwLock::new(0u64);
    rt.block_on(async {
        for _ in 0..n {
            match path.as_str() {
                "sem_acquire" => drop(black_box(ours.acquire().await)),
                "tokio_sem_acquire" => drop(black_box(theirs.acquire().await)),
                "sem_try_acquire" => drop(black_box(ours.try_acquire())),
                "tokio_sem_try_acquire" => drop(black_box(theirs.try_acquire())),
                "rw_read" => drop(black_box(*our_rw.read().await)),
                "tokio_rw_read" => drop(black_box(*their_rw.read().await)),
                "rw_write" => *our_rw.write().await += 1,
                "tokio_rw_write" => *their_rw.write().await += 1,
                other => panic!("unknown path {other:?}"),
            }
        }
    });
}
