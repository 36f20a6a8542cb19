//! Runs `n` sequential uncontended acquire+release pairs on Redis, by
//! lockyard (`lockyard`: `try_acquire`; `lockyard-acquire`: `acquire` with
//! a timeout) or by a floor of `lockyard_testkit::floor` (`floor`: the fenced
//! floor, one script `SET NX PX` + `INCR`, one compare-and-delete +
//! `PUBLISH`; `own`: lockyard's own scripts, keys and owner value by hand;
//! `own-untimed`: the same on a connection with no response timeout, so no
//! timer per request;
//! `plain`: `SET NX PX` + compare-and-delete; each on one multiplexed
//! connection), on a current-thread runtime, for counting the *client's*
//! instructions under callgrind (which, unlike wall time, a loaded machine
//! does not move). `LOCKYARD_BENCH_CALLGRIND=1 cargo bench --bench redis`
//! runs it (after the build below) against the bench's server; by hand:
//!
//! ```text
//! redis-server --port 7399 --save "" --daemonize yes
//! cargo build --release --example redis_instructions --features redis
//! for who in floor lockyard; do
//!   for n in 1000 3000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       target/release/examples/redis_instructions redis://127.0.0.1:7399/ $who $n 2>&1 | grep refs
//!   done
//! done
//! ```
//!
//! (instructions at 3000 − instructions at 1000) / 2000 is the client's
//! cost of one acquire+release (connecting and warming up cancel out).

use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::floor::{Floor, TOKEN};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:7399/".to_owned());
    let who = args.next().unwrap_or_else(|| "lockyard".to_owned());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    // Concurrent tasks, each on its own name, sharing the `n` pairs (as the
    // bench's 64-task rows, on one thread).
    let tasks: u64 = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let ttl = Duration::from_secs(30);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match who.as_str() {
            "floor" | "own" | "own-untimed" | "plain" => {
                let mut floor = match who.as_str() {
                    "floor" => Floor::connect_fenced(&url, ttl).await,
                    "own" => Floor::connect_own(&url, ttl).await,
                    "own-untimed" => Floor::connect_own_untimed(&url, ttl).await,
                    _ => Floor::connect(&url, ttl).await,
                };
                if tasks > 1 {
                    fn key(t: usize) -> String {
                        format!("instr:floor:{}:{t}", std::process::id())
                    }
                    let per = usize::try_from(n / tasks).expect("ops");
                    floor.tasks_round(tasks as usize, per, key).await;
                    return;
                }
                let key = format!("instr:floor:{}", std::process::id());
                for _ in 0..n {
                    floor.acquire_release(&key, TOKEN).await;
                }
            }
            "lockyard" | "lockyard-acquire" | "lockyard-named" => {
                let blocking = who != "lockyard";
                // `lockyard-named`: `RedisLocks::acquire(name, ..)` per call,
                // as the bench's contender, which makes a handle each time.
                let named = who == "lockyard-named";
                let locks = RedisLocks::connect_with(&url, RedisOptions::default().ttl(ttl))
                    .await
                    .expect("connect");
                // One task body per way of acquiring, each its own future:
                // a body with all three would lay their code out together,
                // and the instruction cache would see more than one way's.
                let run = |t: u64, ops: u64| {
                    let name = format!("instr:lockyard:{}:{t}", std::process::id());
                    let lock = locks.lock(&name).expect("name");
                    let locks = locks.clone();
                    let wait = Duration::from_secs(5);
                    if named {
                        tokio::spawn(async move {
                            for _ in 0..ops {
                                let guard = locks.acquire(&name, wait).await.expect("free");
                                guard.release().await.expect("release");
                            }
                        })
                    } else if blocking {
                        tokio::spawn(async move {
                            for _ in 0..ops {
                                let guard = lock.acquire(wait).await.expect("free");
                                guard.release().await.expect("release");
                            }
                        })
                    } else {
                        tokio::spawn(async move {
                            for _ in 0..ops {
                                let guard = lock.try_acquire().await.expect("free");
                                guard.release().await.expect("release");
                            }
                        })
                    }
                };
                let handles: Vec<_> = (0..tasks).map(|t| run(t, n / tasks)).collect();
                for h in handles {
                    h.await.expect("task");
                }
                locks.shutdown().await;
            }
            other => panic!(
                "floor, own, own-untimed, plain, lockyard, lockyard-acquire or lockyard-named, not {other}"
            ),
        }
    });
}
