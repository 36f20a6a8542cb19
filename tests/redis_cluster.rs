//! `RedisLocks` on a private Redis Cluster (3 masters, and 3 replicas for
//! the failover tests), reached through the plain constructor with one
//! node's URL: every primitive on names spread over every master, listing,
//! sharded wakeups, per-master renewal batches, a master that dies, slot
//! migration while a lock is held and waited for, failover with and without
//! `WAIT`, and an unreachable cluster.
#![cfg(feature = "redis")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lockyard::redis::{RedisLockGuard, RedisLocks, RedisOptions};
use lockyard_testkit::cluster::RedisCluster;
use lockyard_testkit::proxy::{FaultProxy, Rule, Then};
use lockyard_testkit::redis::RedisServer;
use tokio::time::Instant;

/// Every test's outer bound: longer than the kit's `LIMIT`, since a
/// Cluster's failovers and slot moves take seconds each.
const LIMIT: Duration = Duration::from_secs(60);

async fn cluster(masters: usize, replicas: usize) -> RedisCluster {
    tokio::task::spawn_blocking(move || RedisCluster::start(masters, replicas))
        .await
        .unwrap()
}

/// `per_master` names per master, keyed by the master's port.
fn names_per_master(
    c: &RedisCluster,
    prefix: &str,
    per_master: usize,
) -> BTreeMap<u16, Vec<String>> {
    let mut by: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..10_000 {
        let name = format!("{prefix}-{i}");
        let port = c.master_of(&format!("lockyard:{{{name}}}:lock"));
        let v = by.entry(port).or_default();
        if v.len() < per_master {
            v.push(name);
        }
        if by.len() == c.masters() && by.values().all(|v| v.len() == per_master) {
            return by;
        }
    }
    panic!("could not spread names over the masters");
}

/// Waits (at most `within`) until the node on `port` has a sharded
/// subscription to `name`'s channel.
async fn shard_subscribed(c: &RedisCluster, port: u16, name: &str, within: Duration) {
    let seen = async {
        while !c
            .node(port)
            .command(&["PUBSUB", "SHARDCHANNELS"])
            .contains(name)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(within, seen)
        .await
        .unwrap_or_else(|_| panic!("no sharded subscription for {name} on {port} in {within:?}"));
}

fn opts(ttl: Duration) -> RedisOptions {
    RedisOptions::default()
        .ttl(ttl)
        .connect_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primitive_works_on_every_master_and_list_sees_them_all() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let locks = RedisLocks::connect(&c.url()).await.unwrap();
        assert!(locks.is_cluster(), "a cluster node's URL is detected");
        let names = names_per_master(&c, "every", 2);
        let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        for name in names.values().flatten() {
            // Exclusive: fencing tokens increase per resource.
            let g = locks.acquire(name, Duration::from_secs(5)).await.unwrap();
            let first = g.fencing_token();
            g.release().await.unwrap();
            let g = locks.try_acquire(name).await.unwrap();
            assert!(g.fencing_token() > first, "{name}: fencing tokens increase");
            let other = locks.try_acquire(name).await;
            assert!(other.unwrap_err().is_would_block(), "{name} is exclusive");
            held.push(Box::new(g));

            // RW lock (readers share) and semaphore, each on its own name.
            let rw = locks.rwlock(&format!("{name}-rw")).unwrap();
            let r1 = rw.try_read().await.unwrap();
            let r2 = rw.try_read().await.unwrap();
            assert!(rw.try_write().await.unwrap_err().is_would_block());
            drop((r1, r2));
            let w = rw.write(Duration::from_secs(5)).await.unwrap();
            drop(w);

            let sem = locks.semaphore(&format!("{name}-sem"), 2).unwrap();
            let p1 = sem.try_acquire().await.unwrap();
            let _p2 = sem.try_acquire().await.unwrap();
            assert!(sem.try_acquire().await.unwrap_err().is_would_block());
            drop(p1);
            let p3 = sem.acquire(Duration::from_secs(5)).await.unwrap();
            held.push(Box::new(p3));
        }
        let listed: BTreeSet<String> = locks
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        for (port, ns) in &names {
            for n in ns {
                assert!(
                    listed.contains(n),
                    "list() misses {n} (on master {port}): {listed:?}"
                );
                assert!(
                    listed.contains(&format!("{n}-sem")),
                    "list() misses {n}-sem"
                );
            }
        }
        drop(held);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_urls_take_several_seeds_and_survive_a_dead_one() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let dead = lockyard_testkit::redis::free_port();
        let url = format!(
            "redis+cluster://127.0.0.1:{dead},127.0.0.1:{}/",
            c.nodes[1].port()
        );
        let locks = RedisLocks::connect(&url).await.unwrap();
        assert!(locks.is_cluster());
        for name in names_per_master(&c, "seeds", 1).values().flatten() {
            locks
                .try_acquire(name)
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
        }
        // A lazy client cannot read the slot map: refused, with the reason.
        let lazy = RedisLocks::connect_lazy(&url, RedisOptions::default()).unwrap_err();
        assert!(lazy.to_string().contains("connect_with"), "{lazy}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_sharded_pubsub_on_the_slots_master() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        // A long lease: a waiter that missed the release would wait for it
        // to run out (30 s) and time out after 10 s.
        let holder = RedisLocks::connect_with(&c.url(), opts(Duration::from_secs(30)))
            .await
            .unwrap();
        let waiter = RedisLocks::connect_with(&c.nodes[2].url(), opts(Duration::from_secs(30)))
            .await
            .unwrap();
        let names = names_per_master(&c, "wake", 1);
        for (port, ns) in &names {
            let name = ns[0].clone();
            let g = holder.acquire(&name, Duration::from_secs(5)).await.unwrap();
            let w = waiter.clone();
            let n = name.clone();
            let waiting = tokio::spawn(async move { w.acquire(&n, Duration::from_secs(10)).await });
            // The waiter subscribed on the slot's master, sharded.
            shard_subscribed(&c, *port, &name, Duration::from_secs(5)).await;
            for n in &c.nodes {
                let classic = n.command(&["PUBSUB", "CHANNELS"]);
                assert!(
                    !classic.contains(&name),
                    "classic SUBSCRIBE used on {}: {classic}",
                    n.port()
                );
            }
            let released = Instant::now();
            g.release().await.unwrap();
            let got = waiting.await.unwrap().expect("woken by the release");
            assert!(released.elapsed() < Duration::from_secs(10));
            drop(got);
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_are_batched_per_master() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let locks = RedisLocks::connect_with(&c.url(), opts(Duration::from_millis(900)))
            .await
            .unwrap();
        let names = names_per_master(&c, "batch", 10);
        let mut held = Vec::new();
        for name in names.values().flatten() {
            held.push(locks.try_acquire(name).await.unwrap());
        }
        let before = locks.stats();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = locks.stats();
        let renewals = after.renewals - before.renewals;
        let trips = after.renewal_round_trips - before.renewal_round_trips;
        // 30 leases renewed every 300 ms for 3 s: ~300 renewals. One
        // round trip per lease would be ~300 trips; per master, ~30.
        assert!(renewals >= 150, "renewals: {renewals}");
        assert!(
            trips * 5 <= renewals,
            "{renewals} renewals took {trips} round trips"
        );
        assert!(held.iter().all(|g| !g.is_lost()));
        assert_eq!(after.lost, 0);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_dies_loses_exactly_its_leases() {
    tokio::time::timeout(LIMIT, async {
        let mut c = cluster(3, 0).await;
        let ttl = Duration::from_millis(1200);
        let locks = RedisLocks::connect_with(&c.url(), opts(ttl)).await.unwrap();
        let names = names_per_master(&c, "dies", 2);
        let mut held: Vec<(u16, RedisLockGuard)> = Vec::new();
        for (port, ns) in &names {
            for n in ns {
                held.push((*port, locks.try_acquire(n).await.unwrap()));
            }
        }
        let victim = *names.keys().nth(1).unwrap();
        let i = c.nodes.iter().position(|n| n.port() == victim).unwrap();
        c.nodes[i].stop();
        let killed = Instant::now();
        for (port, g) in &held {
            if *port == victim {
                tokio::time::timeout(ttl * 3, g.lost())
                    .await
                    .unwrap_or_else(|_| panic!("a lease on the dead master {port} was not lost"));
            }
        }
        // The others keep renewing, well past their TTL.
        tokio::time::sleep((ttl * 3).saturating_sub(killed.elapsed())).await;
        for (port, g) in &held {
            if *port != victim {
                assert!(!g.is_lost(), "a lease on live master {port} was lost");
            }
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_and_waited_for_lock_follows_its_slot_to_another_master() {
    tokio::time::timeout(LIMIT, async {
        let c = Arc::new(cluster(3, 0).await);
        let ttl = Duration::from_millis(1500);
        let a = RedisLocks::connect_with(&c.url(), opts(ttl)).await.unwrap();
        let b = RedisLocks::connect_with(&c.nodes[2].url(), opts(ttl))
            .await
            .unwrap();
        let names = names_per_master(&c, "moves", 1);
        let (&from, ns) = names.iter().next().unwrap();
        let name = ns[0].clone();
        let to = *names.keys().find(|p| **p != from).unwrap();
        let g = a.acquire(&name, Duration::from_secs(5)).await.unwrap();
        let token = g.fencing_token();
        let waiter = {
            let (b, n) = (b.clone(), name.clone());
            tokio::spawn(async move { b.acquire(&n, Duration::from_secs(30)).await })
        };
        let slot = c.slot_of(&format!("lockyard:{{{name}}}:lock"));
        // Migrating for two renewal periods, then moved.
        let mover = {
            let c = c.clone();
            tokio::task::spawn_blocking(move || {
                c.migrate_slot(slot, from, to, Duration::from_millis(1200))
            })
        };
        mover.await.unwrap();
        assert_eq!(c.master_of(&format!("lockyard:{{{name}}}:lock")), to);
        // The waiter's wakeup subscription followed the slot to its new
        // master (after the old one dropped it).
        shard_subscribed(&c, to, &name, Duration::from_secs(10)).await;
        // Held across the move and well after: renewals followed it.
        tokio::time::sleep(ttl * 2).await;
        assert!(!g.is_lost(), "the holder lost its lock to a slot migration");
        assert!(b.try_acquire(&name).await.unwrap_err().is_would_block());
        if waiter.is_finished() {
            panic!(
                "the waiter finished while the lock was held: {:?}",
                waiter.await.unwrap().map(|g| g.fencing_token())
            );
        }
        g.release().await.unwrap();
        let next = waiter.await.unwrap().expect("the waiter follows the slot");
        assert!(next.fencing_token() > token);
    })
    .await
    .expect("bounded");
}

/// Holds `name` through `holder` while `contender` tries to take it for
/// `watch`; returns (when `lost` fired, when the contender was granted).
async fn race_after_failover(
    holder: &RedisLockGuard,
    contender: &RedisLocks,
    name: &str,
    watch: Duration,
) -> (Option<Instant>, Option<Instant>) {
    let end = Instant::now() + watch;
    let mut lost_at = None;
    while Instant::now() < end {
        if lost_at.is_none() && holder.is_lost() {
            lost_at = Some(Instant::now());
        }
        if let Ok(g) = contender.try_acquire(name).await {
            let at = Instant::now();
            if lost_at.is_none() && holder.is_lost() {
                lost_at = Some(at);
            }
            drop(g);
            return (lost_at, Some(at));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (lost_at, None)
}

async fn failover_case(wait: bool) {
    // With WAIT, two replicas per master: after the failover the new master
    // still has one to confirm renewals (with none left, unconfirmed
    // renewals would make the holder lose the lock, as documented).
    let mut c = cluster(3, if wait { 2 } else { 1 }).await;
    let ttl = Duration::from_secs(3);
    let mut o = opts(ttl);
    if wait {
        o = o.wait_for_replicas(1, Duration::from_millis(500));
    }
    let a = RedisLocks::connect_with(&c.url(), o.clone()).await.unwrap();
    let b = RedisLocks::connect_with(&c.cluster_url(), opts(ttl))
        .await
        .unwrap();
    let names = names_per_master(&c, if wait { "fo-wait" } else { "fo" }, 1);
    let (&master, ns) = names
        .iter()
        .find(|(p, _)| **p != c.nodes[0].port())
        .unwrap();
    let name = ns[0].clone();
    let g = a.acquire(&name, Duration::from_secs(5)).await.unwrap();
    let key = format!("lockyard:{{{name}}}:lock");
    let has_key = |port: u16| {
        c.node(port)
            .readonly_command(&["EXISTS", &key])
            .contains(":1")
    };
    let replica = if wait {
        // WAIT 1 confirmed it on at least one of the two replicas before
        // the guard was returned: that one is promoted (a replica that did
        // not confirm may lack it, as the README says).
        let confirmed = c.replicas_of(master).into_iter().find(|&r| has_key(r));
        confirmed.expect("WAIT returned, yet no replica has the grant")
    } else {
        c.replica_of(master)
    };
    if !wait {
        // Without WAIT nothing says the replica has it yet: the test waits
        // (a grant not replicated when the master dies is the window the
        // README's "Cluster and replicas" describes).
        let replicated = async {
            while !has_key(replica) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), replicated)
            .await
            .expect("replicated");
    }
    let i = c.nodes.iter().position(|n| n.port() == master).unwrap();
    c.nodes[i].stop();
    // The replica takes over (the cluster elects it after the node
    // timeout; TAKEOVER makes it certain).
    let r = c
        .node(replica)
        .command(&["CLUSTER", "FAILOVER", "TAKEOVER"]);
    assert!(r.starts_with("+OK"), "{r}");
    let (lost_at, granted_at) = race_after_failover(&g, &b, &name, Duration::from_secs(8)).await;
    if let Some(granted) = granted_at {
        let lost = lost_at.expect("someone else was granted the lock, the holder was never told");
        assert!(
            lost <= granted,
            "the holder learnt of the loss after the takeover"
        );
    }
    // Replicated before the failover: the lock survives it, renewed on the
    // new master with the same token.
    assert!(
        granted_at.is_none(),
        "a replicated lock was granted again after the failover"
    );
    assert!(!g.is_lost(), "renewals did not reach the new master");
    // Waiters and new acquisitions work on the new master.
    drop(g);
    let next = b.acquire(&name, Duration::from_secs(10)).await.unwrap();
    drop(next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_the_lock_or_tells_the_holder_first() {
    tokio::time::timeout(LIMIT, failover_case(false))
        .await
        .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_replica_wait_keeps_the_lock() {
    tokio::time::timeout(LIMIT, failover_case(true))
        .await
        .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_no_replica_confirms_is_undone_and_unavailable() {
    tokio::time::timeout(LIMIT, async {
        // One server without replicas: WAIT 1 can never be satisfied.
        let server = RedisServer::start();
        // A WAIT long enough for a loaded machine's live replica to answer.
        let o = opts(Duration::from_secs(5)).wait_for_replicas(1, Duration::from_millis(500));
        let waits = RedisLocks::connect_with(&server.url(), o).await.unwrap();
        let e = waits.try_acquire("unreplicated").await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        assert!(e.to_string().contains("replicas"), "{e}");
        let plain = RedisLocks::connect(&server.url()).await.unwrap();
        assert!(
            !plain.is_locked("unreplicated").await.unwrap(),
            "the grant was undone"
        );

        // With a replica attached, the same acquisition succeeds.
        let port = server.port();
        let replica = RedisServer::start_with(move |_, _| {
            vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()]
        });
        let synced = async {
            loop {
                // Streaming, not only connected: a replica shown online
                // with its link up can still be held back, and a WAIT
                // then times out.
                if server.replicates_to(&replica) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), synced)
            .await
            .expect("replica in sync");
        let g = waits.try_acquire("unreplicated").await.unwrap();
        assert!(
            replica
                .command(&["EXISTS", "lockyard:{unreplicated}:lock"])
                .contains(":1")
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!g.is_lost(), "replicated renewals keep it");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_unavailable_not_backend() {
    tokio::time::timeout(LIMIT, async {
        let mut c = cluster(3, 0).await;
        let o = opts(Duration::from_secs(5)).op_timeout(Duration::from_millis(500));
        let locks = RedisLocks::connect_with(&c.url(), o).await.unwrap();
        let names = names_per_master(&c, "down", 1);
        for n in c.nodes.iter_mut() {
            n.stop();
        }
        for name in names.values().flatten() {
            let started = Instant::now();
            let e = locks.try_acquire(name).await.unwrap_err();
            assert!(e.is_unavailable(), "{name}: {e:?}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "bounded by the op timeout"
            );
            let e = locks
                .acquire(name, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(e.is_unavailable() || e.is_timeout(), "{name}: {e:?}");
        }
        let e = locks.list().await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
    })
    .await
    .expect("bounded");
}

/// A half-open sharded pub/sub connection (a node's replies stop: no error,
/// no FIN) is noticed by the health check, and the waiter it carried is
/// woken, instead of sleeping until the holder's 30 s lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_sharded_pubsub_connection_is_noticed() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let names = names_per_master(&c, "half-open", 1);
        let (&port, ns) = names.iter().next().unwrap();
        let name = ns[0].clone();
        let opts = opts(Duration::from_secs(30)).op_timeout(Duration::from_millis(500));
        // The holder reaches the master directly; the waiter, which
        // connects after the announcement, through a proxy.
        let holder = RedisLocks::connect_with(&c.url(), opts.clone())
            .await
            .unwrap();
        let g = holder.acquire(&name, Duration::from_secs(5)).await.unwrap();
        let proxy = FaultProxy::start(port);
        c.announce_port(port, proxy.port());
        let waiter = RedisLocks::connect_with(&c.url(), opts).await.unwrap();
        let waiting = tokio::spawn({
            let name = name.clone();
            async move {
                let got = waiter.acquire(&name, Duration::from_secs(20)).await;
                (got.map(|g| g.fencing_token()), Instant::now())
            }
        });
        shard_subscribed(&c, port, &name, Duration::from_secs(5)).await;
        assert!(
            proxy.accepted() > 0,
            "the waiter reached the master directly"
        );
        // From its next health check on, the master's pub/sub connection
        // answers nothing: the release message sent to it is lost.
        proxy.on_request(Rule {
            pattern: b"PING".to_vec(),
            hold: Duration::ZERO,
            then: Then::HoldReplies,
        });
        proxy.wait_matched(1, Duration::from_secs(5)).await;
        let released = Instant::now();
        g.release().await.unwrap();
        let (got, at) = waiting.await.unwrap();
        got.unwrap();
        let after = at.duration_since(released);
        assert!(
            after < Duration::from_secs(3),
            "the waiter got the lock {after:?} after the release"
        );
    })
    .await
    .expect("bounded");
}

/// The lock key of `name` under the default prefix.
fn lock_key(name: &str) -> String {
    format!("lockyard:{{{name}}}:lock")
}

/// An error and its sources, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether the node on `port` has `key` now (a migrating source answers
/// `ASK` for a key it does not have).
fn has_key(c: &RedisCluster, port: u16, key: &str) -> bool {
    let reply = c.node(port).command(&["EXISTS", key]);
    assert!(
        reply == ":1" || reply == ":0" || reply.starts_with("-ASK"),
        "EXISTS {key} on {port}: {reply}"
    );
    reply == ":1"
}

/// Two names on one master and two other masters: `(from, [name, name],
/// [to, to])`.
fn names_to_move(c: &RedisCluster, prefix: &str) -> (u16, Vec<String>, Vec<u16>) {
    let names = names_per_master(c, prefix, 2);
    let (&from, ns) = names.iter().next().unwrap();
    let to: Vec<u16> = names.keys().copied().filter(|p| *p != from).collect();
    (from, ns.clone(), to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_while_its_slot_migrates_frees_the_lock() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let ttl = Duration::from_secs(10);
        let a = RedisLocks::connect_with(&c.url(), opts(ttl)).await.unwrap();
        let b = RedisLocks::connect_with(&c.nodes[1].url(), opts(ttl))
            .await
            .unwrap();
        let names = names_per_master(&c, "release-moving", 5);
        let (&from, ns) = names.iter().next().unwrap();
        let to = *names.keys().find(|p| **p != from).unwrap();
        let slot = |n: &str| c.slot_of(&lock_key(n));

        // Released while its slot migrates, keys not moved yet: the source
        // serves the release, and the key is gone when release() returns.
        let n = &ns[0];
        let g = a.acquire(n, Duration::from_secs(5)).await.unwrap();
        c.begin_migration(slot(n), from, to);
        let released = Instant::now();
        g.release().await.expect("released while the slot migrates");
        assert!(
            !has_key(&c, from, &lock_key(n)),
            "release() returned Ok after {:?} but the lock key is still on the source",
            released.elapsed()
        );
        c.move_keys(slot(n), from, to);
        c.finish_migration(slot(n), to);
        let next = b.try_acquire(n).await.expect("free after the migration");
        next.release().await.unwrap();

        // Released after its key moved to the importing master (the source
        // answers ASK).
        let n = &ns[1];
        let g = a.acquire(n, Duration::from_secs(5)).await.unwrap();
        c.begin_migration(slot(n), from, to);
        c.move_keys(slot(n), from, to);
        g.release().await.expect("released after its key moved");
        c.finish_migration(slot(n), to);
        assert!(
            !has_key(&c, to, &lock_key(n)),
            "the lock key is on the target still"
        );

        // Dropped while its slot migrates: released in the background.
        let n = &ns[2];
        let g = a.acquire(n, Duration::from_secs(5)).await.unwrap();
        c.begin_migration(slot(n), from, to);
        drop(g);
        let gone = async {
            while has_key(&c, from, &lock_key(n)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3), gone)
            .await
            .expect("a dropped guard's lock is released while its slot migrates");
        c.move_keys(slot(n), from, to);
        c.finish_migration(slot(n), to);

        // A read lock and a semaphore permit, released mid-migration.
        let n = &ns[3];
        let rw = a.rwlock(n).unwrap();
        let r = rw.read(Duration::from_secs(5)).await.unwrap();
        c.begin_migration(slot(n), from, to);
        r.release()
            .await
            .expect("a read lock released while the slot migrates");
        let readers = format!("lockyard:{{{n}}}:readers");
        assert!(
            !has_key(&c, from, &readers),
            "the reader is still on the source"
        );
        c.move_keys(slot(n), from, to);
        c.finish_migration(slot(n), to);
        b.rwlock(n)
            .unwrap()
            .try_write()
            .await
            .expect("free")
            .release()
            .await
            .unwrap();

        let n = &ns[4];
        let sem = a.semaphore(n, 1).unwrap();
        let p = sem.acquire(Duration::from_secs(5)).await.unwrap();
        c.begin_migration(slot(n), from, to);
        p.release()
            .await
            .expect("a permit released while the slot migrates");
        let permits = format!("lockyard:{{{n}}}:sem");
        assert!(
            !has_key(&c, from, &permits),
            "the permit is still on the source"
        );
        c.move_keys(slot(n), from, to);
        c.finish_migration(slot(n), to);
        let p = b
            .semaphore(n, 1)
            .unwrap()
            .try_acquire()
            .await
            .expect("free");
        p.release().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_while_its_slot_migrates_removes_the_grant() {
    tokio::time::timeout(LIMIT, async {
        // No replicas: WAIT 1 never confirms, so every grant is undone,
        // after the WAIT, by which time the slot is migrating.
        let c = cluster(3, 0).await;
        let o = opts(Duration::from_secs(10)).wait_for_replicas(1, Duration::from_millis(1500));
        let a = RedisLocks::connect_with(&c.url(), o).await.unwrap();
        let names = names_per_master(&c, "undo-moving", 1);
        let (&from, ns) = names.iter().next().unwrap();
        let to = *names.keys().find(|p| **p != from).unwrap();
        let n = ns[0].clone();
        let attempt = {
            let (a, n) = (a.clone(), n.clone());
            tokio::spawn(async move { a.try_acquire(&n).await })
        };
        let granted = async {
            while !has_key(&c, from, &lock_key(&n)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(1), granted)
            .await
            .expect("the grant is made before the WAIT ends");
        c.begin_migration(c.slot_of(&lock_key(&n)), from, to);
        let e = attempt.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("replicas"), "{e}");
        assert!(
            !has_key(&c, from, &lock_key(&n)),
            "the unconfirmed grant was not undone: the lock stays until its TTL"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_redirected_by_ask_is_confirmed_by_the_node_that_applied_it() {
    tokio::time::timeout(LIMIT, async {
        let mut c = cluster(3, 1).await;
        let ttl = Duration::from_millis(1000);
        let o = opts(ttl).wait_for_replicas(1, Duration::from_millis(100));
        let a = RedisLocks::connect_with(&c.url(), o).await.unwrap();
        let (from, ns, to) = names_to_move(&c, "wait-moving");
        // Both leases' keys move to other masters mid-migration: the
        // source answers their renewals with ASK.
        let guards = [
            a.acquire(&ns[0], Duration::from_secs(5)).await.unwrap(),
            a.acquire(&ns[1], Duration::from_secs(5)).await.unwrap(),
        ];
        for (n, to) in ns.iter().zip(&to) {
            let slot = c.slot_of(&lock_key(n));
            c.begin_migration(slot, from, *to);
            c.move_keys(slot, from, *to);
        }
        // The first target loses its replica: renewals applied there are
        // confirmed by nobody, while the source's replica is in sync.
        let replica = c.replica_of(to[0]);
        c.nodes.iter_mut().find(|n| n.port() == replica).unwrap().stop();
        let lost = tokio::time::timeout(ttl * 3, guards[0].lost()).await;
        assert!(
            lost.is_ok(),
            "a lease was kept for 3 TTLs on renewals no replica of the node that applied them confirmed"
        );
        assert!(
            !guards[1].is_lost(),
            "a lease renewed on a target whose replica confirms was lost"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_and_is_locked_work_when_the_ask_target_forgot_its_scripts() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let ttl = Duration::from_secs(10);
        let a = RedisLocks::connect_with(&c.url(), opts(ttl)).await.unwrap();
        let b = RedisLocks::connect_with(&c.nodes[1].url(), opts(ttl))
            .await
            .unwrap();
        let names = names_per_master(&c, "noscript-moving", 1);
        let (&from, ns) = names.iter().next().unwrap();
        let to = *names.keys().find(|p| **p != from).unwrap();
        let n = &ns[0];
        let g = a.acquire(n, Duration::from_secs(5)).await.unwrap();
        let slot = c.slot_of(&lock_key(n));
        c.begin_migration(slot, from, to);
        c.move_keys(slot, from, to);
        let flushed = c.node(to).command(&["SCRIPT", "FLUSH"]);
        assert_eq!(flushed, "+OK");
        assert!(b.is_locked(n).await.expect("is_locked on the ASK target"));
        g.extend(ttl).await.expect("extend on the ASK target");
        c.finish_migration(slot, to);
        g.release().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_first_used_while_its_slot_migrates_is_unavailable_naming_the_slot() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let a = RedisLocks::connect_with(&c.url(), opts(Duration::from_secs(5)))
            .await
            .unwrap();
        let names = names_per_master(&c, "fresh-moving", 1);
        let (&from, ns) = names.iter().next().unwrap();
        let to = *names.keys().find(|p| **p != from).unwrap();
        let n = &ns[0];
        let slot = c.slot_of(&lock_key(n));
        c.begin_migration(slot, from, to);
        let started = Instant::now();
        let e = a.acquire(n, Duration::from_millis(800)).await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        assert!(started.elapsed() >= Duration::from_millis(800), "{e}");
        assert!(
            chain(&e).contains(&format!("hash slot {slot} is migrating")),
            "the error does not name the migrating slot: {}",
            chain(&e)
        );
        let e = a.try_acquire(n).await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        assert!(
            chain(&e).contains(&format!("hash slot {slot} is migrating")),
            "{}",
            chain(&e)
        );
        c.move_keys(slot, from, to);
        c.finish_migration(slot, to);
        let g = a.try_acquire(n).await.expect("granted once the slot moved");
        g.release().await.unwrap();
    })
    .await
    .expect("bounded");
}

/// `calls` of `cmdstat_evalsha` in the node's `INFO commandstats` (0 when
/// none ran since the last `CONFIG RESETSTAT`).
fn evalsha_calls(c: &RedisCluster, port: u16) -> u64 {
    let info = c.node(port).command(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a call count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redirected_renewal_does_not_resend_its_whole_pipeline() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster(3, 0).await;
        let ttl = Duration::from_millis(900);
        let a = RedisLocks::connect_with(&c.url(), opts(ttl)).await.unwrap();
        let names = names_per_master(&c, "pipeline-moving", 12);
        let (&from, ns) = names.iter().next().unwrap();
        let to = *names.keys().find(|p| **p != from).unwrap();
        let mut guards = Vec::new();
        for n in ns {
            guards.push(a.acquire(n, Duration::from_secs(5)).await.unwrap());
        }
        // One lease's key moves: its renewal in the master's pipeline is
        // answered ASK, the other eleven run.
        let slot = c.slot_of(&lock_key(&ns[0]));
        c.begin_migration(slot, from, to);
        c.move_keys(slot, from, to);
        tokio::time::sleep(ttl).await;
        let before = a.stats().renewals;
        assert_eq!(c.node(from).command(&["CONFIG", "RESETSTAT"]), "+OK");
        tokio::time::sleep(ttl * 3).await;
        let ran = evalsha_calls(&c, from);
        let sent = a.stats().renewals - before;
        // Every renewal the watchdog sent counts once in `sent` (the
        // redirected one twice: in the pipeline and alone); one round
        // (13) of slack for the edges of the window.
        assert!(ran > 0 && sent > 0, "no renewals: ran {ran}, sent {sent}");
        assert!(
            ran <= sent + 13,
            "the source ran {ran} renewals for {sent} sent: a pipeline was resent whole"
        );
        for g in &guards {
            assert!(!g.is_lost(), "{} lost", g.resource());
        }
        c.finish_migration(slot, to);
    })
    .await
    .expect("bounded");
}
