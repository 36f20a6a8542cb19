//! Servers that are not the Redis we expect: one that wants a password, one
//! that speaks another protocol, one that accepts and never answers, and
//! URLs that are not Redis URLs. Each is a typed error, in bounded time, and
//! never counted as contention.
#![cfg(feature = "redis")]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use lockyard::LockError;
use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::LIMIT;
use lockyard_testkit::redis::RedisServer;

fn opts() -> RedisOptions {
    RedisOptions::default()
        .ttl(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .op_timeout(Duration::from_millis(500))
}

/// Connects and takes one lock: the first point at which a bad server must
/// have been noticed.
async fn connect_and_lock(url: &str) -> Result<(), LockError> {
    let fut = async {
        let locks = RedisLocks::connect_with(url, opts()).await?;
        let guard = locks.acquire("k", Duration::from_millis(500)).await?;
        guard.release().await
    };
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("a bad server must not hang the client")
}

/// A TCP server on a free loopback port that answers every read with
/// `reply` (or stays silent when it is empty), until the test ends.
fn fake_server(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                // Bounded: the connection ends when the client goes away.
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !reply.is_empty() && stream.write_all(reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("redis://127.0.0.1:{port}/")
}

#[tokio::test]
async fn wrong_password_is_refused_not_unavailable() {
    let server = RedisServer::start();
    server.command(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let err = connect_and_lock(&server.url()).await.unwrap_err();
    assert!(
        matches!(err, LockError::Backend { .. }),
        "no password: want Backend, got {err:?}"
    );
    assert!(!err.is_contended() && !err.is_unavailable());

    let wrong = format!("redis://:nope@127.0.0.1:{}/", server.port());
    let err = connect_and_lock(&wrong).await.unwrap_err();
    assert!(
        matches!(err, LockError::Backend { .. }),
        "wrong password: want Backend, got {err:?}"
    );

    let right = format!("redis://:s3cret@127.0.0.1:{}/", server.port());
    connect_and_lock(&right).await.unwrap();
}

#[tokio::test]
async fn a_server_speaking_another_protocol_is_a_typed_error() {
    let url = fake_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    let start = Instant::now();
    let err = connect_and_lock(&url).await.unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Protocol { .. } | LockError::Unavailable { .. } | LockError::Backend { .. }
        ),
        "{err:?}"
    );
    assert!(!err.is_contended(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_silent_server_is_unavailable_in_bounded_time() {
    let url = fake_server(b"");
    let start = Instant::now();
    let err = connect_and_lock(&url).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn urls_that_are_not_redis_urls_are_invalid_arguments() {
    for url in ["", "not a url", "http://127.0.0.1:6379/", "redis://[::1"] {
        let err = RedisLocks::connect_with(url, opts()).await.unwrap_err();
        assert!(err.is_invalid_input(), "{url:?}: {err:?}");
    }
}
