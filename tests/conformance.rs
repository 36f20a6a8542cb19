//! The guard contract (`lockyard_testkit::conformance`), run on every
//! backend through `Arc<dyn Lock>`. A new backend passes this before it
//! lands: add one `conformance_tests!` line.

use std::sync::Arc;
use std::time::Duration;

use lockyard::Lock;
use lockyard_testkit::conformance::Keep;
use lockyard_testkit::conformance_tests;

async fn file_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let dir = tempfile::tempdir().unwrap();
    // Two managers contend through the kernel, as two processes do.
    let m1 = lockyard::FileLockManager::new(dir.path()).unwrap();
    let m2 = lockyard::FileLockManager::new(dir.path()).unwrap();
    let a: Arc<dyn Lock> = Arc::new(m1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(m2.lock(name).unwrap());
    (Box::new((dir, m1, m2)), a, b)
}

async fn local_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let lock: Arc<dyn Lock> = Arc::new(lockyard::NamedRwLock::new(name));
    (Box::new(()), lock.clone(), lock)
}

conformance_tests!(file, file_views);
conformance_tests!(local, local_views);

#[cfg(feature = "redis")]
async fn redis_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    use lockyard::redis::{RedisLocks, RedisOptions};
    let server = lockyard_testkit::redis::RedisServer::start();
    let opts = RedisOptions::default().ttl(Duration::from_secs(30));
    let c1 = RedisLocks::connect_with(&server.url(), opts.clone())
        .await
        .unwrap();
    let c2 = RedisLocks::connect_with(&server.url(), opts).await.unwrap();
    let a: Arc<dyn Lock> = Arc::new(c1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(c2.lock(name).unwrap());
    (Box::new(server), a, b)
}

#[cfg(feature = "redis")]
conformance_tests!(redis, redis_views);

/// The same lock through two clients of a private 3-master Redis Cluster,
/// each connected through the plain constructor with one node's URL.
#[cfg(feature = "redis")]
async fn redis_cluster_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    use lockyard::redis::{RedisLocks, RedisOptions};
    let cluster =
        tokio::task::spawn_blocking(|| lockyard_testkit::cluster::RedisCluster::start(3, 0))
            .await
            .unwrap();
    let opts = RedisOptions::default().ttl(Duration::from_secs(30));
    let c1 = RedisLocks::connect_with(&cluster.url(), opts.clone())
        .await
        .unwrap();
    let c2 = RedisLocks::connect_with(&cluster.nodes[2].url(), opts)
        .await
        .unwrap();
    assert!(c1.is_cluster() && c2.is_cluster());
    let a: Arc<dyn Lock> = Arc::new(c1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(c2.lock(name).unwrap());
    (Box::new(cluster), a, b)
}

#[cfg(feature = "redis")]
conformance_tests!(redis_cluster, redis_cluster_views);

/// The same lock through two clients of a private TLS-only redis-server
/// (`rediss://`, the test's own CA).
#[cfg(all(feature = "redis", feature = "tls"))]
async fn redis_tls_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    use lockyard::redis::{RedisLocks, RedisOptions};
    use lockyard_testkit::tls::{ServerTls, TlsFiles};
    let files = TlsFiles::generate();
    let server = lockyard_testkit::redis::RedisServer::start_tls(&ServerTls::new(&files));
    let opts = RedisOptions::default()
        .ttl(Duration::from_secs(30))
        .tls_ca(files.ca());
    let c1 = RedisLocks::connect_with(&server.url(), opts.clone())
        .await
        .unwrap();
    let c2 = RedisLocks::connect_with(&server.url(), opts).await.unwrap();
    let a: Arc<dyn Lock> = Arc::new(c1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(c2.lock(name).unwrap());
    // The server goes before the files it reads.
    (Box::new((server, files)), a, b)
}

#[cfg(all(feature = "redis", feature = "tls"))]
conformance_tests!(redis_tls, redis_tls_views);
