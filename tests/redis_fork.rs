//! A Redis lock taken in a forked child is the child's: its owner record
//! names the child (its pid), and its token is not one the parent also
//! hands out. The child is made by the C library's `fork`, after the parent
//! has taken locks (so the parent's per-process and per-thread caches of
//! the owner record and of random bytes are there to be inherited).
#![cfg(feature = "redis")]

use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::fork::in_forked_child;
use lockyard_testkit::redis::RedisServer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts() -> RedisOptions {
    RedisOptions::default().ttl(Duration::from_secs(30))
}

/// The value stored for lock `name` (its token line and owner record).
fn stored(server: &RedisServer, name: &str) -> String {
    server.command(&["GET", &format!("lockyard:{{{name}}}:lock")])
}

#[test]
fn a_forked_childs_lock_names_the_child_and_has_a_token_of_its_own() {
    let server = RedisServer::start();
    let url = server.url();
    let rt = runtime();
    // The parent takes locks on this thread: the caches are warm.
    let parent = rt.block_on(async {
        let locks = RedisLocks::connect_with(&url, opts()).await.unwrap();
        let g = locks
            .acquire("parent", Duration::from_secs(5))
            .await
            .unwrap();
        let kept = locks.acquire("kept", Duration::from_secs(5)).await.unwrap();
        g.release().await.unwrap();
        (locks, kept)
    });
    let code = in_forked_child(|| {
        let rt = runtime();
        rt.block_on(async {
            let Ok(locks) = RedisLocks::connect_with(&url, opts()).await else {
                return 2;
            };
            let Ok(g) = locks.acquire("child", Duration::from_secs(5)).await else {
                return 3;
            };
            let owner = match locks.owner("child").await {
                Ok(Some(owner)) => owner,
                _ => return 4,
            };
            // Left held for the parent to read; it expires by its TTL.
            std::mem::forget(g);
            if owner.pid == std::process::id() {
                0
            } else {
                eprintln!(
                    "child {}: the record names pid {}",
                    std::process::id(),
                    owner.pid
                );
                1
            }
        })
    });
    assert_eq!(code, 0, "the forked child's lock did not name the child");
    // Parent and child drew their tokens from different random bytes.
    let token = |v: String| v.lines().next().unwrap_or_default().to_owned();
    let child = token(stored(&server, "child"));
    let parent_token = token(stored(&server, "kept"));
    assert_eq!(child.len(), 32, "{child:?}");
    assert_ne!(child, parent_token);
    rt.block_on(async {
        let next = parent
            .0
            .acquire("next", Duration::from_secs(5))
            .await
            .unwrap();
        assert_ne!(
            token(stored(&server, "next")),
            child,
            "the parent reused the child's token"
        );
        next.release().await.unwrap();
        parent.1.release().await.unwrap();
    });
}
