//! `examples/axum_service.rs`, started on a free loopback port against a
//! private redis-server and driven with real HTTP requests from concurrent
//! clients: the status codes, the exported metrics, and that shutdown
//! leaves no lock held (issue 11).
#![cfg(all(feature = "redis", feature = "metrics", feature = "serde"))]

#[allow(dead_code)]
#[path = "../examples/axum_service.rs"]
mod service;

use std::net::SocketAddr;
use std::time::Duration;

use lockyard::stats::{self, Backend};
use lockyard::{FileLockManager, RedisLocks};
use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::{bounded, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Long enough that work only ends by shutdown (or a lost lock).
const FOREVER: &str = "ms=600000";

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits until `check` holds, polling (bounded).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(check())).await;
}

fn held(backend: Backend, name: &str) -> u64 {
    stats::get(backend, name).map_or(0, |s| s.held)
}

/// The value of the sample `name{labels…}` in Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_answers_409_429_and_lost_exports_metrics_and_shuts_down_clean() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = service::Config {
        redis_url: server.url(),
        lock_dir: dir.path().to_owned(),
        expensive_permits: 2,
        deploy_ttl: Duration::from_secs(2),
    };
    let app = bounded(service::app(&config)).await.expect("app");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(service::run(app, listener, async {
        let _ = stopped.await;
    }));

    // A long rebuild of acme holds its file lock ...
    let long_rebuild = tokio::spawn(async move {
        http(addr, "POST", &format!("/tenants/acme/rebuild?{FOREVER}")).await
    });
    until("acme's rebuild holds", || {
        held(Backend::File, "rebuild-acme") == 1
    })
    .await;
    // ... so concurrent rebuilds of acme are 409 with the holder; globex is free.
    let conflicts: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { http(addr, "POST", "/tenants/acme/rebuild").await }))
        .collect();
    for c in conflicts {
        let (status, body) = bounded(c).await.unwrap();
        assert_eq!(status, 409, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["holder"]["pid"], std::process::id());
    }
    let (status, body) = bounded(http(addr, "POST", "/tenants/globex/rebuild?ms=1")).await;
    assert_eq!(status, 200, "{body}");

    // Two long expensive requests take both permits; four more are 429.
    let long_expensive: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move { http(addr, "GET", &format!("/expensive?{FOREVER}")).await })
        })
        .collect();
    until("both permits taken", || {
        held(Backend::Local, "expensive") == 2
    })
    .await;
    let refused: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { http(addr, "GET", "/expensive").await }))
        .collect();
    for r in refused {
        assert_eq!(bounded(r).await.unwrap().0, 429);
    }

    // A deploy holds the Redis lock; a second one is 409 busy; when the key
    // is taken over, the first one's work is cut off: 409 "lost".
    let long_deploy =
        tokio::spawn(async move { http(addr, "POST", &format!("/deploy?{FOREVER}")).await });
    until("deploy holds", || held(Backend::Redis, "deploy") == 1).await;
    let (status, body) = bounded(http(addr, "POST", "/deploy")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("busy"), "{body}");
    server.command(&["SET", "lockyard:{deploy}:lock", "thief", "PX", "60000"]);
    let (status, body) = bounded(long_deploy).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"lost\""), "{body}");
    server.command(&["DEL", "lockyard:{deploy}:lock"]);

    // /locks lists what is held now.
    let (status, body) = bounded(http(addr, "GET", "/locks")).await;
    assert_eq!(status, 200);
    let locks: serde_json::Value = serde_json::from_str(&body).unwrap();
    let held_files: Vec<&str> = locks["file"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(held_files, ["rebuild-acme"]);

    // /metrics: the direct file, semaphore and Redis acquisitions, exported.
    let (status, text) = bounded(http(addr, "GET", "/metrics")).await;
    assert_eq!(status, 200);
    let file = [("backend", "file"), ("lock", "rebuild-acme")];
    let sem = [("backend", "local"), ("lock", "expensive")];
    let deploy = [("backend", "redis"), ("lock", "deploy")];
    assert_eq!(
        sample(&text, "lockyard_acquisitions_total", &file),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "lockyard_busy_total", &file), Some(5.0));
    assert_eq!(sample(&text, "lockyard_contended_total", &file), Some(5.0));
    assert_eq!(sample(&text, "lockyard_held", &file), Some(1.0));
    assert_eq!(
        sample(&text, "lockyard_acquisitions_total", &sem),
        Some(2.0)
    );
    assert_eq!(sample(&text, "lockyard_busy_total", &sem), Some(4.0));
    assert_eq!(sample(&text, "lockyard_held", &sem), Some(2.0));
    assert_eq!(
        sample(&text, "lockyard_acquisitions_total", &deploy),
        Some(1.0)
    );
    assert_eq!(sample(&text, "lockyard_busy_total", &deploy), Some(1.0));
    assert_eq!(sample(&text, "lockyard_lost_total", &deploy), Some(1.0));
    assert_eq!(sample(&text, "lockyard_held", &deploy), Some(0.0));
    assert!(
        sample(
            &text,
            "lockyard_redis_renewals_total",
            &[("backend", "redis")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &text,
            "lockyard_redis_leases_lost_total",
            &[("backend", "redis")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "lockyard_wait_seconds_count",
            &[("backend", "file"), ("lock", "rebuild-globex")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "lockyard_hold_seconds_count",
            &[("backend", "file"), ("lock", "rebuild-globex")]
        ),
        Some(1.0)
    );

    // Graceful shutdown: the in-flight work stops, every guard is released.
    stop.send(()).unwrap();
    let (status, body) = bounded(long_rebuild).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("stopped by shutdown"), "{body}");
    for e in long_expensive {
        assert_eq!(bounded(e).await.unwrap().0, 200);
    }
    bounded(serving).await.unwrap().unwrap();

    for (backend, name) in [
        (Backend::File, "rebuild-acme"),
        (Backend::Local, "expensive"),
        (Backend::Redis, "deploy"),
    ] {
        assert_eq!(held(backend, name), 0, "{backend}/{name} still held");
    }
    let files = FileLockManager::new(dir.path()).unwrap();
    let listed = bounded(files.list()).await.unwrap();
    assert!(listed.iter().all(|l| !l.held), "{listed:?}");
    let redis = bounded(RedisLocks::connect(&server.url())).await.unwrap();
    let listed = bounded(redis.list()).await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}
