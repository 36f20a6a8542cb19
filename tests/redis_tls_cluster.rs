//! A Redis Cluster over TLS (feature `tls`): every node TLS-only, with a
//! TLS cluster bus and replication; reached through one node's `rediss://`
//! URL (detected as a Cluster node) and through a `rediss+cluster://` seed
//! list; names on every master's slots lock, exclude and wake waiters
//! (sharded pub/sub over TLS); the wrong CA fails as on one server.
#![cfg(all(feature = "redis", feature = "tls"))]

use std::time::{Duration, Instant};

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard::{LockError, TlsProblem};
use lockyard_testkit::cluster::RedisCluster;
use lockyard_testkit::tls::{ServerTls, TlsFiles};
use lockyard_testkit::{bounded, bounded_for, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_locks_on_every_master_through_either_url() {
    let files = TlsFiles::generate();
    let tls = ServerTls::new(&files);
    // Forming a cluster of TLS nodes takes longer than one wait may.
    let cluster = bounded_for(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || RedisCluster::start_tls(3, 0, &tls)),
    )
    .await
    .unwrap();
    assert!(cluster.url().starts_with("rediss://"));
    assert!(cluster.cluster_url().starts_with("rediss+cluster://"));
    let opts = RedisOptions::default()
        .ttl(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(3))
        .tls_ca(files.ca());
    let a = bounded(RedisLocks::connect_with(&cluster.url(), opts.clone()))
        .await
        .unwrap();
    let b = bounded(RedisLocks::connect_with(
        &cluster.cluster_url(),
        opts.clone(),
    ))
    .await
    .unwrap();
    assert!(a.is_cluster() && b.is_cluster());

    // Names until every master serves one.
    let mut names: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let name = format!("job-{i}");
        let master = cluster.master_of(&name);
        if names.iter().all(|(_, m)| *m != master) {
            names.push((name, master));
        }
        if names.len() == 3 {
            break;
        }
    }
    for (name, master) in &names {
        let held = bounded(a.try_acquire(name)).await.unwrap();
        let refused = bounded(b.try_acquire(name)).await.unwrap_err();
        assert!(refused.is_would_block(), "{name}: {refused}");
        let b2 = b.clone();
        let n = name.clone();
        let waiter = tokio::spawn(async move {
            let started = Instant::now();
            let got = b2.acquire(&n, Duration::from_secs(8)).await.map(|_| ());
            (got, started.elapsed())
        });
        // The waiter subscribed (sharded, over TLS) on the name's master.
        let channel = format!("lockyard:{{{name}}}:released");
        eventually("the waiter subscribes on its shard over TLS", || async {
            let reply = cluster
                .node(*master)
                .command(&["PUBSUB", "SHARDNUMSUB", &channel]);
            reply.lines().last() == Some("1")
        })
        .await;
        bounded(held.release()).await.unwrap();
        let (got, waited) = bounded(waiter).await.unwrap();
        got.unwrap();
        assert!(waited < Duration::from_secs(5), "{name}: {waited:?}");
    }

    // The wrong CA, through the seed list: the same typed error as one
    // server's.
    let wrong = opts.clone().tls_ca(files.other_ca());
    let err = bounded(RedisLocks::connect_with(&cluster.cluster_url(), wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Tls {
                problem: TlsProblem::UntrustedCertificate,
                ..
            }
        ),
        "{err:?}"
    );
}
