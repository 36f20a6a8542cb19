//! [`RedisLock`]: a handle to one exclusive lock, and the acquisition loop.
//!
//! Acquisition, in order:
//! 1. take this task's turn in the in-process FIFO queue of the name (only
//!    the head of the queue talks to Redis);
//! 2. run the acquire script (`SET NX PX` + `INCR fence`); if it answers
//!    "held", subscribe to the release channel, *then* retry once (so a
//!    release between the first attempt and the subscription is not missed);
//! 3. wait for a release message, the holder's remaining TTL, or the
//!    deadline, whichever comes first, and retry. Without pub/sub the wait is
//!    a backoff (5 ms doubling to 1 s) bounded by the holder's TTL.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::Value;
use tokio::time::Instant;

use super::client::{RedisLocks, bad_reply};
use super::guard::{Held, RedisLockGuard};
use super::keys::{LockKeys, validate_name};
use super::lease::{Expired, retry_after_late_grant};
use super::pool::Conn;
use super::scripts;
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::owner::Owner;

/// A handle to one named exclusive lock on Redis; see
/// [`RedisLocks::lock`]. Cheap to clone; holds nothing by itself.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lockyard::{AcquireOptions, Lock};
/// use lockyard::redis::RedisLocks;
///
/// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
/// let lock: Arc<dyn Lock> = Arc::new(locks.lock("billing")?);
/// let guard = lock.lock(&AcquireOptions::exclusive().timeout(Duration::from_secs(5))).await?;
/// assert_eq!(guard.resource(), "billing");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisLock {
    client: RedisLocks,
    name: String,
}

impl RedisLock {
    pub(crate) fn new(client: RedisLocks, name: &str) -> Self {
        Self {
            client,
            name: name.to_owned(),
        }
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Acquires the lock, waiting at most `timeout`; see
    /// [`RedisLocks::acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`].
    pub async fn acquire(&self, timeout: Duration) -> Result<RedisLockGuard, LockError> {
        self.client.acquire(&self.name, timeout).await
    }

    /// Acquires the lock under `options`; see [`RedisLocks::acquire_with`].
    ///
    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`].
    pub async fn acquire_with(
        &self,
        options: &AcquireOptions,
    ) -> Result<RedisLockGuard, LockError> {
        self.client.acquire_with(&self.name, options).await
    }

    /// Acquires the lock if it is free now; see [`RedisLocks::try_acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`].
    pub async fn try_acquire(&self) -> Result<RedisLockGuard, LockError> {
        self.client.try_acquire(&self.name).await
    }

    /// Whether anyone holds the lock now.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        self.client.is_locked(&self.name).await
    }

    /// Who holds the lock now; see [`RedisLocks::owner`].
    ///
    /// # Errors
    ///
    /// As [`RedisLocks::owner`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn owner(&self) -> Result<Option<Owner>, LockError> {
        self.client.owner(&self.name).await
    }
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lock for RedisLock {
    fn name(&self) -> &str {
        &self.name
    }

    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`].
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        Ok(self.client.acquire_with(&self.name, options).await?.into())
    }

    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`].
    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        unsupported_mode(&self.name, mode)?;
        Ok(self.client.try_acquire(&self.name).await?.into())
    }

    async fn is_locked(&self) -> Result<bool, LockError> {
        self.client.is_locked(&self.name).await
    }
}

fn unsupported_mode(name: &str, mode: Mode) -> Result<(), LockError> {
    match mode {
        Mode::Exclusive => Ok(()),
        _ => Err(LockError::Unsupported {
            resource: name.to_owned(),
            what: "a shared mode (use the Redis RW lock)",
        }),
    }
}

/// The outcome of one run of the acquire script.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// We hold it; the fencing token.
    Acquired(u64),
    /// Someone else does.
    Held {
        /// Remaining lease in ms; `None` if the key has no expiry.
        pttl: Option<u64>,
        /// The holder's owner value (token line + owner metadata).
        holder: Vec<u8>,
    },
}

impl Attempt {
    pub(crate) fn from_reply(name: &str, reply: Value) -> Result<Self, LockError> {
        if let Value::Array(items) = &reply {
            match items.as_slice() {
                [Value::Int(1), Value::Int(fence)] if *fence > 0 => {
                    return Ok(Attempt::Acquired(*fence as u64));
                }
                [Value::Int(0), Value::Int(pttl), Value::BulkString(holder)] => {
                    return Ok(Attempt::Held {
                        pttl: u64::try_from(*pttl).ok(),
                        holder: holder.clone(),
                    });
                }
                _ => {}
            }
        }
        Err(bad_reply(name, "acquire", &reply))
    }
}

/// Parses the owner metadata stored after the token line; `None` for a value
/// lockyard did not write.
pub(crate) fn parse_holder(value: &[u8]) -> Option<Owner> {
    let text = std::str::from_utf8(value).ok()?;
    let (_token, meta) = text.split_once('\n')?;
    Owner::parse(meta).ok()
}

/// A random owner token: 128 bits from the OS CSPRNG, hex.
///
/// The bytes come from `getrandom`, fetched 32 tokens at a time into a
/// thread-local buffer (one system call per 32 tokens instead of one per
/// token). Each byte is used once. The buffer records the pid that filled
/// it and is refilled in a forked child, so parent and child never share
/// tokens.
pub(crate) fn new_token(name: &str) -> Result<String, LockError> {
    const TOKEN: usize = 16;
    const BATCH: usize = 32 * TOKEN;
    struct Pool {
        bytes: [u8; BATCH],
        used: usize,
        pid: u32,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> = const {
            std::cell::RefCell::new(Pool { bytes: [0; BATCH], used: BATCH, pid: 0 })
        };
    }
    let mut buf = [0u8; TOKEN];
    POOL.with_borrow_mut(|pool| {
        let pid = std::process::id();
        if pool.used + TOKEN > BATCH || pool.pid != pid {
            getrandom::fill(&mut pool.bytes)?;
            pool.used = 0;
            pool.pid = pid;
        }
        buf.copy_from_slice(&pool.bytes[pool.used..pool.used + TOKEN]);
        // Never hand out the same bytes twice.
        pool.bytes[pool.used..pool.used + TOKEN].fill(0);
        pool.used += TOKEN;
        Ok(())
    })
    .map_err(|e: getrandom::Error| LockError::Backend {
        resource: name.to_owned(),
        op: "generate an owner token",
        source: Box::new(std::io::Error::other(e.to_string())),
    })?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * TOKEN);
    for b in buf {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok(s)
}

/// The stored owner value: `token\n` + owner metadata (so waiters can say
/// who holds the lock), in [`Owner::to_text`]'s format.
pub(crate) fn owner_value(token: &str, mode: Mode) -> String {
    // The lines before `since=` (header, pid, start, host) never change in
    // a process: format them once.
    static PREFIX: OnceLock<String> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let text = Owner::current(mode).to_text();
        match text.find("\nsince=") {
            Some(i) => text[..=i].to_owned(),
            None => text,
        }
    });
    let since = humantime::format_rfc3339_nanos(SystemTime::now());
    let mut v = String::with_capacity(token.len() + prefix.len() + 80);
    v.push_str(token);
    v.push('\n');
    v.push_str(prefix);
    let _ = write!(v, "since={since}\nmode={mode}\n");
    v
}

/// An acquire script in flight. If dropped armed (the acquiring future was
/// cancelled while the script may have reached Redis), a background task
/// deletes the key if it holds our value, on the same connection so it runs
/// after the script.
struct InFlight<'a> {
    client: &'a RedisLocks,
    name: &'a str,
    keys: &'a LockKeys,
    value: &'a str,
    conn: Conn,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.client.spawn_release(
                self.name.to_owned(),
                &scripts::RELEASE,
                vec![self.keys.lock.clone()],
                vec![self.value.to_owned(), self.keys.channel.clone()],
                Some(self.conn.clone()),
                (),
            );
        }
    }
}

/// The acquisition loop behind every acquire method. `would_block`: report
/// contention as `WouldBlock` (try_acquire) rather than `Timeout`.
pub(crate) async fn acquire(
    client: &RedisLocks,
    name: &str,
    options: &AcquireOptions,
    would_block: bool,
) -> Result<RedisLockGuard, LockError> {
    validate_name(name)?;
    unsupported_mode(name, options.mode)?;
    let deadline = Deadline::after(options.timeout);
    let try_once = options.timeout == Some(Duration::ZERO);
    let contended = |holder: Option<Owner>| {
        let holder = holder.map(Box::new);
        if would_block {
            LockError::WouldBlock {
                resource: name.to_owned(),
                holder,
            }
        } else {
            LockError::Timeout {
                resource: name.to_owned(),
                waited: deadline.elapsed(),
                holder,
            }
        }
    };
    let inner = &client.inner;

    // 1. This task's turn among local waiters.
    // (Uncontended, take it without arming a timer: registering one can
    // cost a wakeup of the runtime's driver.)
    let turn = match inner.local.get(name).try_turn() {
        Ok(t) => t,
        Err(queue) if try_once => return Err(contended(local_holder(&queue))),
        Err(queue) => {
            let hint = inner.local.get(name);
            tokio::select! {
                t = queue.turn() => t,
                () = deadline.sleep() => {
                    tracing::debug!(resource = name, waited = ?deadline.elapsed(), "timed out in the local queue");
                    return Err(contended(local_holder(&hint)));
                }
            }
        }
    };

    // 2. and 3. The head of the local queue talks to Redis.
    let ttl = inner.opts.ttl;
    let keys = LockKeys::new(&inner.opts.key_prefix, name);
    let mut value = owner_value(&new_token(name)?, Mode::Exclusive);
    let mut reconnected = false;
    let mut sub = None;
    let mut backoff = Duration::from_millis(5);
    let mut late = 0;
    let mut last_holder: Option<Owner>;
    // When the last `info` "still waiting" event went out (as time waited).
    let mut last_log = Duration::ZERO;
    let mut conn = client.conn(name, "acquire").await?;
    loop {
        let sent_at = Instant::now();
        let mut in_flight = InFlight {
            client,
            name,
            keys: &keys,
            value: &value,
            conn: conn.clone(),
            armed: true,
        };
        let attempt = client
            .acquire_once(&mut conn, name, &keys, &value, ttl)
            .await;
        in_flight.armed = false;
        drop(in_flight);
        let (pttl, holder) = match attempt {
            Ok(Attempt::Acquired(fence)) => {
                let lease = match client.register_lease(client.lease(
                    name,
                    &scripts::EXTEND,
                    vec![keys.lock.clone()],
                    vec![value.clone()],
                    ttl,
                    sent_at,
                )) {
                    Ok(lease) => lease,
                    Err(Expired) => {
                        // The answer came too late to be sure the lock is
                        // still ours (invariant 1): undo it with its own
                        // token on the same connection, and try again with
                        // a fresh token.
                        client.spawn_release(
                            name.to_owned(),
                            &scripts::RELEASE,
                            vec![keys.lock.clone()],
                            vec![value.clone(), keys.channel.clone()],
                            Some(conn.clone()),
                            (),
                        );
                        retry_after_late_grant(
                            &mut late,
                            !(try_once || deadline.expired()),
                            name,
                            "acquire",
                        )?;
                        value = owner_value(&new_token(name)?, Mode::Exclusive);
                        continue;
                    }
                };
                if sub.is_some() {
                    // Local waiters behind us: the holder is now this process.
                    turn.set_holder(None);
                }
                if sub.is_some() {
                    tracing::debug!(resource = name, waited = ?deadline.elapsed(), fence, "acquired Redis lock after waiting");
                }
                return Ok(RedisLockGuard::new(
                    name.to_owned(),
                    fence,
                    Held {
                        client: client.clone(),
                        keys,
                        value,
                        lease,
                        turn,
                    },
                ));
            }
            Ok(Attempt::Held { pttl, holder }) => (pttl, holder),
            Err(e) => {
                // An outage with our key possibly set: clean up (best effort).
                if e.is_unavailable() {
                    client.spawn_release(
                        name.to_owned(),
                        &scripts::RELEASE,
                        vec![keys.lock.clone()],
                        vec![value.clone(), keys.channel.clone()],
                        None,
                        (),
                    );
                }
                // The connection broke (a restarted server, say): once, try
                // again on a fresh one, with a fresh token (the cleanup above
                // runs after anything sent on the dead connection).
                if conn.is_broken() && !reconnected {
                    reconnected = true;
                    tracing::debug!(resource = name, error = %e, "connection broke; retrying on a fresh one");
                    value = owner_value(&new_token(name)?, Mode::Exclusive);
                    conn = client.conn(name, "acquire").await?;
                    continue;
                }
                return Err(e);
            }
        };
        last_holder = parse_holder(&holder);
        turn.set_holder(last_holder.clone());
        let who = Who(last_holder.as_ref(), &holder);
        if try_once || deadline.expired() {
            tracing::debug!(resource = name, holder = %who, waited = ?deadline.elapsed(), "Redis lock held; giving up");
            return Err(contended(last_holder));
        }
        let Some(sub) = sub.as_mut() else {
            tracing::debug!(resource = name, holder = %who, waited = ?deadline.elapsed(), "Redis lock held; waiting");
            let mut s = tokio::select! {
                s = client.subscribe(&keys.channel) => s,
                () = deadline.sleep() => return Err(contended(last_holder)),
            };
            s.mark_seen();
            sub = Some(s);
            // Subscribed: retry once before waiting.
            continue;
        };
        let holder_left = pttl.map(|ms| Duration::from_millis(ms + 1));
        let wait = if sub.is_reliable() {
            // A key without expiry is foreign or broken: look once a second.
            holder_left.unwrap_or(Duration::from_secs(1))
        } else {
            let w = holder_left.map_or(backoff, |h| h.min(backoff));
            backoff = (backoff * 2).min(Duration::from_secs(1));
            w
        };
        // Look again at least every LOG_EVERY, so that the periodic event
        // below names the current holder.
        let wait = wait.min(LOG_EVERY);
        tokio::select! {
            () = sub.changed() => {}
            () = tokio::time::sleep(wait) => {}
            () = deadline.sleep() => {
                tracing::debug!(resource = name, holder = %who, waited = ?deadline.elapsed(), "timed out waiting for Redis lock");
                return Err(contended(last_holder));
            }
        }
        sub.mark_seen();
        let waited = deadline.elapsed();
        if waited.saturating_sub(last_log) >= LOG_EVERY {
            last_log = waited;
            tracing::info!(resource = name, holder = %who, waited = ?waited, "still waiting for Redis lock");
        } else {
            tracing::trace!(resource = name, holder = %who, waited = ?waited, "retrying Redis lock");
        }
    }
}

/// While still waiting, log who holds the lock at `info` this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Who holds a lock that a task of this process is queued for: the remote
/// holder the head of the queue last saw, else (the usual case) this
/// process.
fn local_holder(queue: &super::local::QueueRef) -> Option<Owner> {
    queue
        .last_holder()
        .or_else(|| Some(Owner::current(Mode::Exclusive)))
}

/// Displays a holder for logs: its metadata, or the raw value if foreign.
struct Who<'a>(Option<&'a Owner>, &'a [u8]);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => write!(f, "{o}"),
            None => {
                let raw = String::from_utf8_lossy(&self.1[..self.1.len().min(64)]);
                write!(f, "unknown owner {raw:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = new_token("x").unwrap();
        let b = new_token("x").unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        // Across buffer refills, all distinct.
        let all: std::collections::HashSet<String> =
            (0..200).map(|_| new_token("x").unwrap()).collect();
        assert_eq!(all.len(), 200);
    }

    #[test]
    fn holder_round_trips() {
        let v = owner_value("abc", Mode::Exclusive);
        let o = parse_holder(v.as_bytes()).unwrap();
        assert_eq!(o.pid, std::process::id());
        assert_eq!(o.mode, Mode::Exclusive);
        let mut me = Owner::current(Mode::Exclusive);
        me.since = o.since;
        assert_eq!(o, me);
        assert!(parse_holder(b"foreign").is_none());
    }

    #[test]
    fn replies() {
        let ok = Value::Array(vec![Value::Int(1), Value::Int(7)]);
        assert!(matches!(
            Attempt::from_reply("n", ok),
            Ok(Attempt::Acquired(7))
        ));
        let held = Value::Array(vec![
            Value::Int(0),
            Value::Int(-1),
            Value::BulkString(b"x".to_vec()),
        ]);
        assert!(matches!(
            Attempt::from_reply("n", held),
            Ok(Attempt::Held { pttl: None, .. })
        ));
        assert!(matches!(
            Attempt::from_reply("n", Value::Okay),
            Err(LockError::Protocol { .. })
        ));
    }
}
