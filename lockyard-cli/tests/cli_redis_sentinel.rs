//! `lockyard exec --redis redis+sentinel://…` (and `LOCKYARD_REDIS`)
//! against a private Sentinel topology: four shell loops increment a
//! counter under the lock, one `lockyard exec` per increment, through a
//! graceful failover; no increment is lost.
#![cfg(all(feature = "redis", unix))]

mod cli_support;

use cli_support::*;
use lockyard_testkit::sentinel::{FAILOVER_LIMIT, RedisSentinel};

/// Increments per loop.
const ROUNDS: u32 = 15;

#[test]
fn exec_on_sentinel_excludes_across_processes_through_a_graceful_failover() {
    let s = RedisSentinel::start(2);
    let env = Env::new();
    let counter = env.path("counter");
    std::fs::write(&counter, "0").unwrap();
    // Read, pause, write: a second holder at the same time loses an
    // increment.
    let increment = format!(
        "n=$(cat '{c}'); sleep 0.01; echo $((n+1)) > '{c}'",
        c = counter.display()
    );
    let loops: Vec<_> = (0..4)
        .map(|i| {
            let run = format!(
                "for i in $(seq {ROUNDS}); do \"$LOCKYARD\" exec -w 60s {redis} counter -- sh -c \"$STEP\" || exit $?; done",
                // Half name the server by flag, half by LOCKYARD_REDIS.
                redis = if i % 2 == 0 { "--redis \"$URL\"" } else { "" },
            );
            let mut sh = std::process::Command::new("sh");
            sh.args(["-c", &run])
                .env("LOCKYARD", bin())
                .env("LOCKYARD_DIR", env.dir())
                .env("URL", s.url())
                .env("STEP", &increment)
                .env_remove("LOCKYARD_REDIS")
                .env_remove("LOCKYARD_TLS_CA")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            if i % 2 == 1 {
                sh.env("LOCKYARD_REDIS", s.url());
            }
            sh.spawn().expect("spawn a loop")
        })
        .collect();
    let read = || -> u32 {
        std::fs::read_to_string(&counter)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        eventually_blocking(FAILOVER_LIMIT, || read() >= 10),
        "the loops did not get under way"
    );
    s.failover();
    for mut child in loops {
        let status = wait_child(&mut child, FAILOVER_LIMIT * 2);
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(status.success(), "a loop failed ({status}): {err}");
    }
    assert_eq!(read(), 4 * ROUNDS, "an increment was lost");
    // `status` finds the new primary too.
    let out = env.run(&["status", "--redis", &s.url()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
