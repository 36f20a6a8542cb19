//! Every public type is `Send + Sync` (or says why not), as in tokio's file
//! of the same name. A compile-time check: this file failing to build is
//! the failure.
#![allow(dead_code)]

fn require_send<T: Send>() {}
fn require_sync<T: Sync>() {}
fn require_unpin<T: Unpin>() {}

macro_rules! assert_send_sync {
    ($($t:ty),* $(,)?) => {
        $(
            const _: fn() = || {
                require_send::<$t>();
                require_sync::<$t>();
            };
        )*
    };
}

assert_send_sync!(
    lockyard::LockError,
    lockyard::LockGuard,
    lockyard::Lost,
    lockyard::LeaseDeadline,
    lockyard::LeaseState,
    lockyard::AcquireOptions,
    lockyard::Mode,
    lockyard::Owner,
    lockyard::TlsSettings,
    lockyard::TlsProblem,
);

#[cfg(feature = "redis")]
mod redis {
    use super::*;

    assert_send_sync!(
        lockyard::redis::RedisLocks,
        lockyard::redis::RedisOptions,
        lockyard::redis::RedisLock,
        lockyard::redis::RedisLockGuard,
        lockyard::redis::RedisLockInfo,
        lockyard::redis::RedisStats,
    );

    /// The futures of the Redis API are `Send`, so they can be spawned.
    fn futures_are_send(locks: lockyard::redis::RedisLocks, lock: lockyard::redis::RedisLock) {
        fn send<F: std::future::Future + Send>(_: F) {}
        send(locks.acquire("x", std::time::Duration::ZERO));
        send(locks.try_acquire("x"));
        send(locks.is_locked("x"));
        send(locks.list());
        send(lock.acquire(std::time::Duration::ZERO));
        send(lockyard::redis::RedisLocks::connect("redis://127.0.0.1:1/"));
    }
}

#[cfg(feature = "redis")]
mod redis_extras {
    use super::*;

    assert_send_sync!(
        lockyard::redis::RedisSemaphore,
        lockyard::redis::RedisPermitGuard,
        lockyard::redis::RedisRwLock,
        lockyard::redis::RedisReadGuard,
        lockyard::redis::RedisWriteGuard,
        lockyard::redis::Redlock,
        lockyard::redis::RedlockOptions,
        lockyard::redis::RedlockLock,
        lockyard::redis::RedlockGuard,
    );

    /// The futures of the semaphore, RW lock and Redlock are `Send`.
    fn futures_are_send(
        sem: lockyard::redis::RedisSemaphore,
        rw: lockyard::redis::RedisRwLock,
        redlock: lockyard::redis::Redlock,
    ) {
        fn send<F: std::future::Future + Send>(_: F) {}
        let t = std::time::Duration::ZERO;
        send(sem.acquire(t));
        send(sem.try_acquire());
        send(sem.holders());
        send(rw.read(t));
        send(rw.write(t));
        send(rw.try_read());
        send(rw.try_write());
        send(redlock.acquire("x", t));
        send(redlock.try_acquire("x"));
        send(redlock.is_locked("x"));
        send(lockyard::redis::Redlock::connect(
            &["redis://127.0.0.1:1/"],
            lockyard::redis::RedisOptions::default(),
        ));
    }
}

// ---- in-process primitives (issue 3) ----

mod local {
    use super::*;
    use lockyard::local::*;
    use std::sync::Arc;

    assert_send_sync!(
        Semaphore,
        SemaphorePermit<'static>,
        OwnedSemaphorePermit,
        RwLock<Vec<u8>>,
        RwLock,
        RwLockReadGuard<'static, Vec<u8>>,
        RwLockWriteGuard<'static, Vec<u8>>,
        OwnedRwLockReadGuard<Vec<u8>>,
        OwnedRwLockWriteGuard<Vec<u8>>,
        RwLockMappedWriteGuard<'static, Vec<u8>>,
        OwnedRwLockReadGuard<Vec<u8>, u8>,
        OwnedRwLockMappedWriteGuard<Vec<u8>, u8>,
        NamedSemaphore,
        NamedRwLock,
        TryAcquireError,
        AcquireError,
        AcquireTimeoutError,
        TryLockError,
        LockTimeoutError,
    );

    const _: fn() = || {
        require_unpin::<SemaphorePermit<'static>>();
        require_unpin::<OwnedSemaphorePermit>();
        require_unpin::<OwnedRwLockWriteGuard<Vec<u8>>>();
    };

    fn send_sync<F: Send + Sync>(_: &F) {}

    /// The futures of the acquiring methods are `Send + Sync`, so they can
    /// be spawned and held across `.await` in `Sync` futures; the `Lock`
    /// trait's (async-trait) futures are `Send`.
    fn futures_are_send_sync(
        s: &'static Semaphore,
        a: Arc<Semaphore>,
        l: &'static RwLock<Vec<u8>>,
        al: Arc<RwLock<Vec<u8>>>,
        ns: &'static NamedSemaphore,
        nl: &'static NamedRwLock,
        o: &'static lockyard::AcquireOptions,
    ) {
        use lockyard::{Lock, Mode};
        fn send<F: std::future::Future + Send>(_: F) {}
        let t = std::time::Duration::ZERO;
        send_sync(&s.acquire());
        send_sync(&s.acquire_many(2));
        send_sync(&s.acquire_timeout(t));
        send_sync(&s.acquire_many_timeout(2, t));
        send_sync(&a.clone().acquire_owned());
        send_sync(&a.clone().acquire_many_owned(2));
        send_sync(&a.acquire_many_owned_timeout(2, t));
        send_sync(&l.read());
        send_sync(&l.write());
        send_sync(&l.read_timeout(t));
        send_sync(&l.write_timeout(t));
        send_sync(&al.clone().read_owned());
        send_sync(&al.clone().write_owned());
        send_sync(&al.clone().read_owned_timeout(t));
        send_sync(&al.write_owned_timeout(t));
        send(ns.lock(o));
        send(ns.try_lock(Mode::Shared));
        send(nl.lock(o));
        send(nl.try_lock(Mode::Exclusive));
    }
}

mod file {
    use super::*;

    assert_send_sync!(
        lockyard::FileLockManager,
        lockyard::FileLockOptions,
        lockyard::FileLockGuard,
        lockyard::FileLock,
        lockyard::FileLockInfo,
        lockyard::WaitStrategy,
        lockyard::CleanupOptions,
    );

    /// The futures of the file-lock API are `Send`, so they can be spawned.
    fn futures_are_send(
        m: lockyard::FileLockManager,
        lock: lockyard::FileLock,
        g: lockyard::FileLockGuard,
    ) {
        fn send<F: std::future::Future + Send>(_: F) {}
        let t = std::time::Duration::ZERO;
        send(m.acquire("x", t));
        send(m.acquire_shared("x", t));
        send(m.acquire_with("x", &lockyard::AcquireOptions::new()));
        send(m.try_acquire("x"));
        send(m.try_acquire_shared("x"));
        send(m.is_locked("x"));
        send(m.owner("x"));
        send(m.list());
        send(m.stale_locks(None));
        send(m.cleanup_stale_locks(None));
        send(lock.acquire(&lockyard::AcquireOptions::new()));
        send(g.release());
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    assert_send_sync!(
        lockyard::postgres::PgLocks,
        lockyard::postgres::PgOptions,
        lockyard::postgres::PgLock,
        lockyard::postgres::PgLockGuard,
        lockyard::postgres::PgLockInfo,
        lockyard::postgres::PgKey,
        lockyard::postgres::PgKeyMode,
        lockyard::postgres::PgSemaphore,
        lockyard::postgres::PgRwLock,
        lockyard::postgres::PgXactLock,
    );

    /// The futures of the Postgres API are `Send`, so they can be spawned.
    fn futures_are_send(locks: lockyard::postgres::PgLocks, lock: lockyard::postgres::PgLock) {
        fn send<F: std::future::Future + Send>(_: F) {}
        send(locks.acquire("x", std::time::Duration::ZERO));
        send(locks.try_acquire("x"));
        send(locks.is_locked("x"));
        send(locks.list());
        send(locks.shutdown());
        send(lock.acquire(std::time::Duration::ZERO));
        send(lockyard::postgres::PgLocks::connect(
            "postgres://127.0.0.1:1/",
        ));
    }
}
