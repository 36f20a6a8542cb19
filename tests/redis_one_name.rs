//! One name is one lock on Redis, as on files: the plain lock's exclusive
//! mode is the RW lock's writer and its shared mode the readers; a name in
//! use as a semaphore refuses lock use and the reverse; a semaphore's permit
//! count is stored with it, and a caller with another count is refused.
#![cfg(feature = "redis")]

use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard::{AcquireOptions, Lock, LockError, Mode};
use lockyard_testkit::redis::RedisServer;

async fn client(server: &RedisServer) -> RedisLocks {
    RedisLocks::connect_with(
        &server.url(),
        RedisOptions::default().ttl(Duration::from_secs(5)),
    )
    .await
    .expect("connect")
}

#[tokio::test]
async fn a_plain_lock_and_a_rw_lock_of_one_name_exclude_each_other() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let held = a.acquire("x", Duration::from_secs(1)).await.unwrap();
    let rw = b.rwlock("x").unwrap();
    assert!(rw.try_read().await.unwrap_err().is_would_block());
    assert!(rw.try_write().await.unwrap_err().is_would_block());
    held.release().await.unwrap();

    let reader = rw.read(Duration::from_secs(1)).await.unwrap();
    let e = a.try_acquire("x").await.unwrap_err();
    assert!(e.is_would_block(), "{e}");
    // A shared hold through the plain lock is a reader too: they share.
    let shared = a
        .acquire_with(
            "x",
            &AcquireOptions::shared().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert_eq!(shared.mode(), Mode::Shared);
    assert!(a.is_locked("x").await.unwrap());
    drop((reader, shared));
}

#[tokio::test]
async fn shared_through_the_lock_trait_excludes_exclusive_elsewhere() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let lock: std::sync::Arc<dyn Lock> = std::sync::Arc::new(a.lock("y").unwrap());
    let r = lock.try_lock(Mode::Shared).await.unwrap();
    assert_eq!(r.mode(), Mode::Shared);
    let e = b.try_acquire("y").await.unwrap_err();
    assert!(e.is_would_block(), "{e}");
    let again = lock.try_lock(Mode::Shared).await.unwrap();
    r.release().await.unwrap();
    again.release().await.unwrap();
    b.try_acquire("y").await.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn a_semaphore_name_refuses_lock_use_and_the_reverse() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let permit = a.semaphore("z", 2).unwrap().try_acquire().await.unwrap();
    for e in [
        b.try_acquire("z").await.unwrap_err(),
        b.acquire("z", Duration::from_millis(300))
            .await
            .unwrap_err(),
        b.rwlock("z").unwrap().try_read().await.unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                LockError::WrongKind {
                    in_use_as: "semaphore",
                    ..
                }
            ),
            "{e}"
        );
    }
    permit.release().await.unwrap();

    let lock = a.acquire("z", Duration::from_secs(1)).await.unwrap();
    let e = b
        .semaphore("z", 2)
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            LockError::WrongKind {
                in_use_as: "lock",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_wrong_kind());
    drop(lock);
}

#[tokio::test]
async fn a_semaphore_keeps_the_permit_count_of_its_first_holder() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let two = a.semaphore("pool", 2).unwrap();
    let p1 = two.try_acquire().await.unwrap();
    let p2 = two.try_acquire().await.unwrap();
    // A caller who thinks it has 4 permits must not hold 4 together.
    let four = b.semaphore("pool", 4).unwrap();
    let e = four.try_acquire().await.unwrap_err();
    assert!(
        matches!(
            e,
            LockError::PermitsMismatch {
                stored: 2,
                requested: 4,
                ..
            }
        ),
        "{e}"
    );
    let e = four.acquire(Duration::from_millis(200)).await.unwrap_err();
    assert!(e.is_wrong_kind(), "{e}");
    assert!(two.try_acquire().await.unwrap_err().is_would_block());
    p1.release().await.unwrap();
    p2.release().await.unwrap();
    // Nobody holds it: no state is left, and a new first holder sets the
    // count again.
    let p = four.try_acquire().await.unwrap();
    assert!(two.try_acquire().await.unwrap_err().is_wrong_kind());
    drop(p);
}
