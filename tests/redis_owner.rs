//! Who holds a Redis lock, semaphore or RW lock: `owner()`, `owners()` and
//! the owners in `list()`, against a private redis-server, including keys
//! lockyard did not write.
#![cfg(feature = "redis")]

use std::time::{Duration, SystemTime};

use lockyard::redis::{RedisLockInfo, RedisLocks};
use lockyard::{LockError, Mode, Owner, host_name};
use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::{LIMIT, bounded};

fn is_me(o: &Owner, mode: Mode) -> bool {
    let age = SystemTime::now()
        .duration_since(o.since)
        .unwrap_or_default();
    o.pid == std::process::id() && o.host == host_name() && o.mode == mode && age < LIMIT
}

fn entry<'a>(list: &'a [RedisLockInfo], name: &str) -> &'a RedisLockInfo {
    list.iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list:?}"))
}

#[tokio::test]
async fn owner_of_a_lock() {
    let server = RedisServer::start();
    let locks = bounded(RedisLocks::connect(&server.url())).await.unwrap();
    assert_eq!(bounded(locks.owner("res")).await.unwrap(), None);

    let g = bounded(locks.acquire("res", Duration::from_secs(1)))
        .await
        .unwrap();
    let owner = bounded(locks.owner("res")).await.unwrap().expect("held");
    assert!(is_me(&owner, Mode::Exclusive), "{owner:?}");
    // The handle says the same; the error of a contender too.
    let handle = locks.lock("res").unwrap();
    assert_eq!(bounded(handle.owner()).await.unwrap(), Some(owner.clone()));
    let other = bounded(RedisLocks::connect(&server.url())).await.unwrap();
    let err = bounded(other.try_acquire("res")).await.unwrap_err();
    assert_eq!(err.holder(), Some(&owner));

    let list = bounded(locks.list()).await.unwrap();
    let info = entry(&list, "res");
    assert_eq!((info.kind, info.holders), ("lock", 1));
    assert_eq!(info.owners, [owner]);

    bounded(g.release()).await.unwrap();
    assert_eq!(bounded(locks.owner("res")).await.unwrap(), None);
    assert!(
        bounded(locks.owner("a{b"))
            .await
            .unwrap_err()
            .is_invalid_input()
    );
}

#[tokio::test]
async fn foreign_values_are_unknown_owners_not_panics() {
    let server = RedisServer::start();
    let locks = bounded(RedisLocks::connect(&server.url())).await.unwrap();
    let key = |name: &str| format!("lockyard:{{{name}}}:lock");
    // Another program's string, one that looks almost like ours, and bytes
    // that are not UTF-8 (sent raw below).
    assert_eq!(server.command(&["SET", &key("plain"), "hello"]), "+OK");
    let almost = "tok\nlockyard-owner 1\npid=notanumber\nhost=h\nsince=x\n";
    assert_eq!(server.command(&["SET", &key("almost"), almost]), "+OK");
    assert_eq!(server.command(&["SET", &key("empty"), ""]), "+OK");
    set_raw(&server, &key("binary"), b"\xff\xfe\n\x00\x80");
    for name in ["plain", "almost", "empty", "binary"] {
        assert_eq!(bounded(locks.owner(name)).await.unwrap(), None, "{name}");
        assert!(bounded(locks.is_locked(name)).await.unwrap(), "{name}");
    }
    // A key of another type: a typed error, not a panic.
    assert_eq!(server.command(&["HSET", &key("hash"), "f", "v"]), ":1");
    let err = bounded(locks.owner("hash")).await.unwrap_err();
    assert!(matches!(err, LockError::Protocol { .. }), "{err:?}");

    // The listing shows them all, with no owner, and does not fail on the
    // hash either.
    let list = bounded(locks.list()).await.unwrap();
    for name in ["plain", "almost", "empty", "binary", "hash"] {
        let info = entry(&list, name);
        assert!(info.owners.is_empty(), "{info:?}");
        assert_eq!(info.ttl, None, "{info:?}");
    }

    // Garbage in a semaphore's set: counted, not identified.
    let sem_key = "lockyard:{gpus}:sem";
    let far = "99999999999999";
    assert_eq!(server.command(&["ZADD", sem_key, far, "junk"]), ":1");
    let sem = locks.semaphore("gpus", 3).unwrap();
    let p = bounded(sem.acquire(Duration::from_secs(1))).await.unwrap();
    let owners = bounded(sem.owners()).await.unwrap();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert!(is_me(&owners[0], Mode::Shared));
    let list = bounded(locks.list()).await.unwrap();
    let info = entry(&list, "gpus");
    assert_eq!((info.holders, info.owners.len()), (2, 1), "{info:?}");
    drop(p);
}

/// `SET key value` with arbitrary bytes.
fn set_raw(server: &RedisServer, key: &str, value: &[u8]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut req = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
        key.len(),
        value.len()
    )
    .into_bytes();
    req.extend_from_slice(value);
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+OK\r\n");
}

#[tokio::test]
async fn owners_of_semaphores_and_rw_locks() {
    let server = RedisServer::start();
    let locks = bounded(RedisLocks::connect(&server.url())).await.unwrap();
    let sem = locks.semaphore("jobs", 3).unwrap();
    assert!(bounded(sem.owners()).await.unwrap().is_empty());
    let p1 = bounded(sem.acquire(Duration::from_secs(1))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let p2 = bounded(sem.acquire(Duration::from_secs(1))).await.unwrap();
    let owners = bounded(sem.owners()).await.unwrap();
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert!(owners.iter().all(|o| is_me(o, Mode::Shared)), "{owners:?}");
    assert!(owners[0].since <= owners[1].since, "longest-held first");

    let rw = locks.rwlock("cfg").unwrap();
    let r = bounded(rw.read(Duration::from_secs(1))).await.unwrap();
    let owners = bounded(rw.owners()).await.unwrap();
    assert!(
        owners.len() == 1 && is_me(&owners[0], Mode::Shared),
        "{owners:?}"
    );

    let list = bounded(locks.list()).await.unwrap();
    assert_eq!(entry(&list, "jobs").owners.len(), 2);
    assert_eq!(entry(&list, "cfg").owners, owners);

    bounded(p1.release()).await.unwrap();
    bounded(r.release()).await.unwrap();
    let w = bounded(rw.write(Duration::from_secs(5))).await.unwrap();
    let owners = bounded(rw.owners()).await.unwrap();
    assert!(
        owners.len() == 1 && is_me(&owners[0], Mode::Exclusive),
        "{owners:?}"
    );
    let list = bounded(locks.list()).await.unwrap();
    assert_eq!(entry(&list, "cfg").owners, owners);
    assert_eq!(entry(&list, "jobs").owners.len(), 1);
    bounded(w.release()).await.unwrap();
    bounded(p2.release()).await.unwrap();
    assert!(bounded(rw.owners()).await.unwrap().is_empty());
    assert!(bounded(sem.owners()).await.unwrap().is_empty());
}

#[tokio::test]
async fn cancelled_owner_queries_leave_the_client_usable() {
    let server = RedisServer::start();
    let locks = bounded(RedisLocks::connect(&server.url())).await.unwrap();
    let g = bounded(locks.acquire("res", Duration::from_secs(1)))
        .await
        .unwrap();
    let sem = locks.semaphore("s", 1).unwrap();
    let _p = bounded(sem.acquire(Duration::from_secs(1))).await.unwrap();
    // Cancel at growing delays: before the request, in flight, after.
    for us in [0u64, 1, 10, 50, 100, 200, 500, 1000, 5000] {
        let d = Duration::from_micros(us);
        let _ = tokio::time::timeout(d, locks.owner("res")).await;
        let _ = tokio::time::timeout(d, sem.owners()).await;
        let _ = tokio::time::timeout(d, locks.list()).await;
    }
    let owner = bounded(locks.owner("res")).await.unwrap().expect("held");
    assert!(is_me(&owner, Mode::Exclusive));
    assert_eq!(bounded(sem.owners()).await.unwrap().len(), 1);
    bounded(g.release()).await.unwrap();
}

/// Captures what `tracing` writes, for the checks below.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn waiters_log_who_holds_it_and_how_long_they_waited() {
    // tracing-core 0.1.36 bug (tokio-rs/tracing#3611): while exactly one
    // `Dispatch` exists in the process, a callsite first hit by another
    // thread (another test of this binary waiting for a lock) caches
    // `Interest::never` from that thread's (empty) default, and the scoped
    // subscriber below would miss the event. A second live `Dispatch`
    // makes tracing combine the interests of all of them instead.
    let _second_dispatch = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = RedisServer::start();
        let holder = bounded(RedisLocks::connect(&server.url())).await.unwrap();
        let waiter = bounded(RedisLocks::connect(&server.url())).await.unwrap();
        let _g = bounded(holder.acquire("res", Duration::from_secs(1)))
            .await
            .unwrap();
        // Past the 5 s mark, so that the periodic `info` event goes out.
        let err = bounded(waiter.acquire("res", Duration::from_millis(5600)))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");

        let sem = holder.semaphore("s", 1).unwrap();
        let _p = bounded(sem.acquire(Duration::from_secs(1))).await.unwrap();
        let err = bounded(
            waiter
                .semaphore("s", 1)
                .unwrap()
                .acquire(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(err.is_timeout(), "{err}");
    });
    let text = out.text();
    let me = format!("pid {} on {} since ", std::process::id(), host_name());
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} event in:\n{text}"))
            .to_owned()
    };
    for what in [
        "exclusive lock busy; waiting",
        "still waiting for exclusive lock",
        "gave up waiting for exclusive lock",
        "semaphore permit busy; waiting",
        "gave up waiting for semaphore permit",
    ] {
        let l = line(what);
        assert!(l.contains(&me) && l.contains("waited="), "{l}");
    }
    let still = line("still waiting for exclusive lock");
    assert!(
        still.contains(" INFO ") && still.contains("waited=5."),
        "{still}"
    );
}
