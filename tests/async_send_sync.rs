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
    lockyard::AcquireOptions,
    lockyard::Mode,
    lockyard::Owner,
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
