//! The hand-written floor shared by the Redis benches: `SET key token NX PX
//! ttl` + an `EVALSHA` compare-and-delete on one multiplexed connection — the
//! least a correct Redis lock can do, and the *fenced* floor (the work a
//! fenced lock with wake-ups must do, by hand).

use std::sync::Arc;
use std::time::Duration;

/// The token every floor acquisition uses (32 hex digits, like a 128-bit one).
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The hand-written floor on one multiplexed connection.
#[derive(Clone)]
pub struct Floor {
    conn: redis::aio::MultiplexedConnection,
    release: Arc<redis::Script>,
    ttl: Duration,
    /// The *fenced* floor: the work a fenced lock must do, by hand.
    fenced: Option<Arc<(redis::Script, redis::Script)>>,
}

/// The fenced floor's acquire: `SET NX PX` + fencing `INCR`, in one script.
const FENCED_ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
     return redis.call('INCR', KEYS[2]) end return 0";
/// The fenced floor's release: compare-and-delete + `PUBLISH` (to wake
/// waiters), in one script.
const FENCED_RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('DEL', KEYS[1]) redis.call('PUBLISH', KEYS[2], 'released') return 1 end return 0";

impl Floor {
    /// Connects to `url`; locks are taken with a TTL of `ttl`.
    pub async fn connect(url: &str, ttl: Duration) -> Self {
        Self::connect_client(redis::Client::open(url).unwrap(), ttl).await
    }

    /// Connects to a `rediss://` `url` whose server's certificate `ca`
    /// signed: the floor over TLS.
    pub async fn connect_tls(url: &str, ca: &std::path::Path, ttl: Duration) -> Self {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(ca).unwrap()),
        };
        Self::connect_client(redis::Client::build_with_tls(url, certs).unwrap(), ttl).await
    }

    async fn connect_client(client: redis::Client, ttl: Duration) -> Self {
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let release = Arc::new(redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        ));
        Self {
            conn,
            release,
            ttl,
            fenced: None,
        }
    }

    /// The *fenced* floor: by hand, what a lock with fencing tokens and
    /// wakeups must do at least: one script for `SET NX PX` + `INCR`, one for
    /// compare-and-delete + `PUBLISH`.
    pub async fn connect_fenced(url: &str, ttl: Duration) -> Self {
        let mut floor = Self::connect(url, ttl).await;
        floor.fenced = Some(Arc::new((
            redis::Script::new(FENCED_ACQUIRE),
            redis::Script::new(FENCED_RELEASE),
        )));
        floor
    }

    /// `SET key token NX PX ttl`, then the compare-and-delete; panics if the
    /// lock was held or the delete did not happen.
    pub async fn acquire_release(&mut self, key: &str, token: &str) {
        if let Some(scripts) = self.fenced.clone() {
            let (acquire, release) = &*scripts;
            let fence: i64 = acquire
                .key(key)
                .key(format!("{key}:fence"))
                .arg(token)
                .arg(self.ttl.as_millis() as u64)
                .invoke_async(&mut self.conn)
                .await
                .unwrap();
            assert!(fence > 0, "fenced floor lock {key} unexpectedly held");
            let n: i64 = release
                .key(key)
                .key(format!("{key}:released"))
                .arg(token)
                .invoke_async(&mut self.conn)
                .await
                .unwrap();
            assert_eq!(n, 1);
            return;
        }
        let opts = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(self.ttl.as_millis() as u64));
        let ok: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg(&opts)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        assert!(ok.is_some(), "floor lock {key} unexpectedly held");
        let n: i64 = self
            .release
            .key(key)
            .arg(token)
            .invoke_async(&mut self.conn)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    /// One round of `tasks` concurrent tasks, task `t` taking and releasing
    /// the key `key(t)` `ops` times in a row.
    pub async fn tasks_round(&self, tasks: usize, ops: usize, key: fn(usize) -> String) {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let mut f = self.clone();
                tokio::spawn(async move {
                    let key = key(t);
                    for _ in 0..ops {
                        f.acquire_release(&key, TOKEN).await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    }
}

/// Median point estimate (ns) criterion saved for `group/bench`.
pub fn median_ns(group: &str, bench: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = dir
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let pe = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = pe.find([',', '}'])?;
    pe[..end].trim().parse().ok()
}
