//! The hand-written floors the Redis benches measure lockyard against, each
//! on one multiplexed connection with no lease machinery (no watchdog, no
//! validity, no queue):
//!
//! - [`Floor::connect`], the *plain* floor: `SET key token NX PX ttl` + an
//!   `EVALSHA` compare-and-delete — the least a correct Redis lock can do;
//! - [`Floor::connect_fenced`], the *fenced* floor: the least a fenced lock
//!   that wakes its waiters must do — one script for `SET NX PX` + the
//!   fencing `INCR`, one for compare-and-delete + `PUBLISH`;
//! - [`Floor::connect_own`], lockyard's *own protocol* by hand: lockyard's
//!   exclusive acquire and release scripts (the `.lua` files themselves, so
//!   this floor follows every change to them), with the keys and the owner
//!   value lockyard sends. Own / fenced is what the protocol costs; lockyard
//!   / own is what the client costs.
//!
//! And the raw hand-off by hand ([`Floor::take`], [`Floor::del_publish`],
//! [`RawWaiter`]): the holder `DEL`s and `PUBLISH`es, the waiter, woken by
//! its subscription, takes the key with `SET NX PX`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lockyard::{Mode, Owner};

/// The token every floor acquisition uses (32 hex digits, like a 128-bit one).
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// One of the hand-written floors, on one multiplexed connection.
#[derive(Clone)]
pub struct Floor {
    conn: redis::aio::MultiplexedConnection,
    ttl: Duration,
    protocol: Arc<Protocol>,
    /// The last key (name) and token used and what the protocol derives
    /// from them, so that a task taking one name over and over formats its
    /// keys once (as lockyard's handle of a name does).
    derived: Option<(String, String, Arc<[String]>)>,
}

/// What a floor says to Redis.
enum Protocol {
    /// `SET NX PX`, then this compare-and-delete.
    Plain { release: redis::Script },
    /// These two scripts, the fencing counter at `<key>:fence`, the
    /// channel `<key>:released`.
    Fenced {
        acquire: redis::Script,
        release: redis::Script,
    },
    /// lockyard's scripts and key layout under `prefix`; the owner value is
    /// the token, a newline and `meta`.
    Own {
        acquire: redis::Script,
        release: redis::Script,
        prefix: String,
        meta: String,
    },
}

/// The plain floor's release: compare-and-delete.
const PLAIN_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// The fenced floor's acquire: `SET NX PX` + fencing `INCR`, in one script.
const FENCED_ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
     return redis.call('INCR', KEYS[2]) end return 0";
/// The fenced floor's release: compare-and-delete + `PUBLISH` (to wake
/// waiters), in one script.
const FENCED_RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('DEL', KEYS[1]) redis.call('PUBLISH', KEYS[2], 'released') return 1 end return 0";
/// lockyard's exclusive acquire (the plain lock and the RW writer).
const OWN_ACQUIRE: &str = include_str!("../../src/redis/protocol/scripts/exclusive_acquire.lua");
/// lockyard's exclusive release (compare-and-delete + `PUBLISH`).
const OWN_RELEASE: &str = include_str!("../../src/redis/protocol/scripts/release.lua");

impl Floor {
    /// The plain floor: connects to `url`; locks are taken with a TTL of
    /// `ttl`.
    pub async fn connect(url: &str, ttl: Duration) -> Self {
        Self::open(url, ttl, plain()).await
    }

    /// The plain floor over TLS: connects to a `rediss://` `url` whose
    /// server's certificate `ca` signed.
    pub async fn connect_tls(url: &str, ca: &std::path::Path, ttl: Duration) -> Self {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(ca).unwrap()),
        };
        let client = redis::Client::build_with_tls(url, certs).unwrap();
        Self::with_client(client, ttl, plain()).await
    }

    /// The *fenced* floor: by hand, what a lock with fencing tokens and
    /// wake-ups must do at least: one script for `SET NX PX` + `INCR`, one
    /// for compare-and-delete + `PUBLISH`.
    pub async fn connect_fenced(url: &str, ttl: Duration) -> Self {
        let protocol = Protocol::Fenced {
            acquire: redis::Script::new(FENCED_ACQUIRE),
            release: redis::Script::new(FENCED_RELEASE),
        };
        Self::open(url, ttl, protocol).await
    }

    /// lockyard's *own protocol* by hand: its exclusive acquire and release
    /// scripts, the keys of a name under the default key prefix, and an
    /// owner value as lockyard writes it (token, newline, owner record).
    /// A `key` given to this floor is a resource name.
    pub async fn connect_own(url: &str, ttl: Duration) -> Self {
        Self::open(url, ttl, own()).await
    }

    /// lockyard's own protocol by hand, as [`connect_own`](Self::connect_own),
    /// on a connection with no response timeout: redis-rs arms a timer for
    /// every request of a connection that has one (its default: 500 ms),
    /// as lockyard's connections have (the client's request timeout). What
    /// that timer costs a client is own / this.
    pub async fn connect_own_untimed(url: &str, ttl: Duration) -> Self {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let client = redis::Client::open(url).unwrap();
        Self::with_config(client, ttl, own(), &config).await
    }

    async fn open(url: &str, ttl: Duration, protocol: Protocol) -> Self {
        Self::with_client(redis::Client::open(url).unwrap(), ttl, protocol).await
    }

    async fn with_client(client: redis::Client, ttl: Duration, protocol: Protocol) -> Self {
        Self::with_config(client, ttl, protocol, &redis::AsyncConnectionConfig::new()).await
    }

    async fn with_config(
        client: redis::Client,
        ttl: Duration,
        protocol: Protocol,
        config: &redis::AsyncConnectionConfig,
    ) -> Self {
        let conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .unwrap();
        Self {
            conn,
            ttl,
            protocol: Arc::new(protocol),
            derived: None,
        }
    }

    /// What the protocol derives from `key` (and `token`): the fenced
    /// floor's counter and channel; lockyard's keys, its channel and the
    /// owner value.
    fn derive(&mut self, key: &str, token: &str) -> Arc<[String]> {
        if let Some((last, last_token, derived)) = &self.derived
            && last == key
            && last_token == token
        {
            return derived.clone();
        }
        let derived: Arc<[String]> = match &*self.protocol {
            Protocol::Plain { .. } => Arc::new([]),
            Protocol::Fenced { .. } => {
                Arc::new([format!("{key}:fence"), format!("{key}:released")])
            }
            // As `protocol/keys.rs` lays them out: `{prefix}{<name>}:<suffix>`,
            // then the owner value.
            Protocol::Own { prefix, meta, .. } => {
                ["lock", "readers", "intent", "fence", "released"]
                    .map(|suffix| format!("{prefix}{{{key}}}:{suffix}"))
                    .into_iter()
                    .chain([format!("{token}\n{meta}")])
                    .collect()
            }
        };
        self.derived = Some((key.to_owned(), token.to_owned(), derived.clone()));
        derived
    }

    /// Takes the lock `key` and releases it; panics if it was held or the
    /// release found it gone.
    pub async fn acquire_release(&mut self, key: &str, token: &str) {
        let ttl = self.ttl.as_millis() as u64;
        let derived = self.derive(key, token);
        let conn = &mut self.conn;
        match &*self.protocol {
            Protocol::Plain { release } => {
                assert!(set_nx_px(conn, key, token, ttl).await, "{key} held");
                let n: i64 = release
                    .key(key)
                    .arg(token)
                    .invoke_async(conn)
                    .await
                    .unwrap();
                assert_eq!(n, 1);
            }
            Protocol::Fenced { acquire, release } => {
                let fence: i64 = acquire
                    .key(key)
                    .key(&derived[0])
                    .arg(token)
                    .arg(ttl)
                    .invoke_async(conn)
                    .await
                    .unwrap();
                assert!(fence > 0, "{key} held");
                let n: i64 = release
                    .key(key)
                    .key(&derived[1])
                    .arg(token)
                    .invoke_async(conn)
                    .await
                    .unwrap();
                assert_eq!(n, 1);
            }
            Protocol::Own {
                acquire, release, ..
            } => {
                let [lock, readers, intent, fence, channel, value] = &derived[..] else {
                    unreachable!("six derived strings")
                };
                // KEYS and ARGV in `exclusive_acquire.lua`'s order; an
                // `acquire` (not a `try_acquire`) queues a waiting writer's
                // intent for a TTL.
                let fence: i64 = acquire
                    .key(lock)
                    .key(readers)
                    .key(intent)
                    .key(fence)
                    .arg(value)
                    .arg(ttl)
                    .arg(ttl)
                    .invoke_async(conn)
                    .await
                    .unwrap();
                assert!(fence > 0, "{key} held");
                let n: i64 = release
                    .key(lock)
                    .arg(value)
                    .arg(channel)
                    .invoke_async(conn)
                    .await
                    .unwrap();
                assert_eq!(n, 1);
            }
        }
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

    /// `SET key TOKEN NX PX ttl`: whether it took `key` (the raw
    /// hand-off's holder and waiter).
    pub async fn take(&mut self, key: &str) -> bool {
        set_nx_px(&mut self.conn, key, TOKEN, self.ttl.as_millis() as u64).await
    }

    /// `DEL key` + `PUBLISH channel released` in one pipeline: the raw
    /// hand-off's release.
    pub async fn del_publish(&mut self, key: &str, channel: &str) {
        let () = redis::pipe()
            .del(key)
            .ignore()
            .publish(channel, "released")
            .ignore()
            .query_async(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("DEL + PUBLISH {key}: {e}"));
    }

    /// The number of subscribers of `channel` (`PUBSUB NUMSUB`).
    pub async fn subscribers(&mut self, channel: &str) -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        n
    }
}

fn own() -> Protocol {
    Protocol::Own {
        acquire: redis::Script::new(OWN_ACQUIRE),
        release: redis::Script::new(OWN_RELEASE),
        prefix: lockyard::redis::RedisOptions::default().key_prefix,
        meta: Owner::current(Mode::Exclusive).to_text(),
    }
}

fn plain() -> Protocol {
    Protocol::Plain {
        release: redis::Script::new(PLAIN_RELEASE),
    }
}

async fn set_nx_px(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    token: &str,
    ttl_ms: u64,
) -> bool {
    let opts = redis::SetOptions::default()
        .conditional_set(redis::ExistenceCheck::NX)
        .with_expiration(redis::SetExpiry::PX(ttl_ms));
    let ok: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg(&opts)
        .query_async(conn)
        .await
        .unwrap();
    ok.is_some()
}

/// The raw hand-off's waiter: a [`Floor`] connection to take the key, and
/// a pub/sub connection to be woken on.
pub struct RawWaiter {
    floor: Floor,
    pubsub: redis::aio::PubSub,
}

impl RawWaiter {
    /// Connects both connections to `url`; keys are taken with a TTL of
    /// `ttl`.
    pub async fn connect(url: &str, ttl: Duration) -> Self {
        let client = redis::Client::open(url).unwrap();
        Self {
            floor: Floor::with_client(client.clone(), ttl, plain()).await,
            pubsub: client.get_async_pubsub().await.unwrap(),
        }
    }

    /// Subscribes to `channel` (confirmed), then tries to take `key` once:
    /// whether it did. When it did not, the subscription stays, for
    /// [`wait_take`](Self::wait_take).
    pub async fn subscribe_and_take(&mut self, key: &str, channel: &str) -> bool {
        self.pubsub.subscribe(channel).await.unwrap();
        if self.floor.take(key).await {
            self.pubsub.unsubscribe(channel).await.unwrap();
            return true;
        }
        false
    }

    /// Waits for a message on `channel` and tries `key` again, until it
    /// takes it; then unsubscribes.
    ///
    /// # Panics
    ///
    /// If no message comes within `limit`.
    pub async fn wait_take(&mut self, key: &str, channel: &str, limit: Duration) {
        loop {
            let message = tokio::time::timeout(limit, self.pubsub.on_message().next()).await;
            assert!(
                matches!(message, Ok(Some(_))),
                "no release on {channel} within {limit:?}"
            );
            if self.floor.take(key).await {
                break;
            }
        }
        self.pubsub.unsubscribe(channel).await.unwrap();
    }

    /// Gives `key` back as the raw holder does: `DEL` + `PUBLISH`.
    pub async fn give_back(&mut self, key: &str, channel: &str) {
        self.floor.del_publish(key, channel).await;
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
