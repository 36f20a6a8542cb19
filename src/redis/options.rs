//! [`RedisOptions`]: the knobs of a [`RedisLocks`](super::RedisLocks) client.

use std::time::Duration;

pub use super::conn::tls::RedisTls;
use crate::error::LockError;

/// Configuration of a [`RedisLocks`](super::RedisLocks) client.
///
/// ```
/// use std::time::Duration;
/// use lockyard::redis::RedisOptions;
///
/// let opts = RedisOptions::default()
///     .key_prefix("myapp:locks:")
///     .ttl(Duration::from_secs(9))
///     .op_timeout(Duration::from_secs(1));
/// assert_eq!(opts.renew_interval_for(opts.ttl), Duration::from_secs(3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key and channel (default `"lockyard:"`). It must not
    /// contain `{` or `}`: the resource name is the `{hash tag}`.
    pub key_prefix: String,
    /// The lease: how long a lock outlives a holder that stops renewing it,
    /// for example because it crashed (default 30 s).
    pub ttl: Duration,
    /// How often the watchdog renews held leases; `None` (the default) means
    /// a third of the lease's TTL.
    pub renew_interval: Option<Duration>,
    /// Clock-drift margin: a holder considers its lock lost at *last
    /// confirmed renewal + TTL − drift*. `None` (the default) means 1 % of the
    /// TTL plus 2 ms, as the Redlock description suggests.
    pub drift: Option<Duration>,
    /// Number of multiplexed connections lock operations are spread over
    /// (default 1), plus one the watchdog uses for renewals. One multiplexed
    /// connection pipelines any number of concurrent requests and measured
    /// fastest on loopback; more help only when some requests are slow.
    pub pool_size: u32,
    /// How long to wait for a connection from the pool, including connecting
    /// (default 5 s).
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one request. `None` (the default)
    /// means 2 s, or half of *TTL − drift* for a lease shorter than that
    /// allows. A value set here must be at most half of *TTL − drift*: a
    /// grant whose answer takes longer than its lease's validity is never
    /// returned as held, so a timeout that allowed such answers would only
    /// turn slowness into failed acquisitions.
    ///
    /// On one server's connections (and the primary the sentinels name) the
    /// timeout is kept by one ticker per client, not by a timer per
    /// request: a request that gets no answer fails between this timeout and
    /// an eighth more after it was sent. A Cluster's requests each have
    /// redis-rs's timer.
    pub op_timeout: Option<Duration>,
    /// `(replicas, timeout)`: after every grant and every renewal, wait with
    /// `WAIT` until that many replicas of the server (on a Cluster, of the
    /// resource's master) confirm the write, at most `timeout` (default
    /// `None`: do not wait). See [`wait_for_replicas`](Self::wait_for_replicas).
    pub wait_for_replicas: Option<(u32, Duration)>,
    /// TLS for `rediss://` URLs (feature `tls`): a custom CA, a client
    /// certificate. Empty by default: the platform's roots, no client
    /// certificate. See [`tls_ca`](Self::tls_ca).
    pub tls: RedisTls,
    /// Consul's lock-delay: after a holder *lost* its lease (it stopped
    /// renewing and the lease ran out, as opposed to a release), nobody is
    /// granted that name for this long (default `None`: no delay). See
    /// [`lock_delay`](Self::lock_delay).
    pub lock_delay: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "lockyard:".to_owned(),
            ttl: Duration::from_secs(30),
            renew_interval: None,
            drift: None,
            pool_size: 1,
            connect_timeout: Duration::from_secs(5),
            op_timeout: None,
            wait_for_replicas: None,
            tls: RedisTls::default(),
            lock_delay: None,
        }
    }
}

impl RedisOptions {
    /// The defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new();
    /// assert_eq!(opts.key_prefix, "lockyard:");
    /// assert_eq!(opts.ttl, Duration::from_secs(30));
    /// assert_eq!(opts, RedisOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the key prefix.
    ///
    /// Two applications on one Redis keep apart by prefix:
    ///
    /// ```
    /// let opts = lockyard::redis::RedisOptions::new().key_prefix("billing:");
    /// assert_eq!(opts.key_prefix, "billing:");
    /// ```
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the lease TTL.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new().ttl(Duration::from_secs(10));
    /// assert_eq!(opts.ttl, Duration::from_secs(10));
    /// assert_eq!(opts.renew_interval_for(opts.ttl), Duration::from_secs(10) / 3);
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the renewal interval (default: TTL / 3).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new().ttl(Duration::from_secs(30)).renew_interval(Duration::from_secs(5));
    /// assert_eq!(opts.renew_interval, Some(Duration::from_secs(5)));
    /// ```
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = Some(interval);
        self
    }

    /// Sets the clock-drift margin (default: TTL / 100 + 2 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new().drift(Duration::from_millis(50));
    /// assert_eq!(opts.drift_for(opts.ttl), Duration::from_millis(50));
    /// ```
    pub fn drift(mut self, drift: Duration) -> Self {
        self.drift = Some(drift);
        self
    }

    /// Sets the number of pooled connections.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// // Some requests wait long (WAIT for replicas): spread them out.
    /// let opts = RedisOptions::new().pool_size(4).wait_for_replicas(1, Duration::from_millis(100));
    /// assert_eq!(opts.pool_size, 4);
    /// ```
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets the connect (and pool checkout) timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new().connect_timeout(Duration::from_millis(500));
    /// assert_eq!(opts.connect_timeout, Duration::from_millis(500));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new().op_timeout(Duration::from_millis(300));
    /// assert_eq!(opts.request_timeout(), Duration::from_millis(300));
    /// ```
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = Some(timeout);
        self
    }

    /// Waits for `replicas` replicas to confirm every grant and renewal,
    /// at most `timeout` each (Redis `WAIT`, as Redisson's
    /// `syncSlaves`), so that a failover to one of them keeps the lock.
    ///
    /// A grant the replicas did not confirm in time is **undone and
    /// reported as [`LockError::Unavailable`]**, not returned as a guard:
    /// the caller has not started its work yet, so failing the acquisition
    /// is the one outcome that cannot end with two holders; it can retry.
    /// (On a Sentinel client, `redis+sentinel://`, an acquisition that
    /// waits retries by itself within its deadline, as it waits through a
    /// failover; the error comes when the deadline passes.)
    /// A renewal they did not confirm counts as not made: the lease's
    /// validity runs on from the last confirmed one, and if none is
    /// confirmed in time the guard's [`lost`](super::RedisLockGuard::lost)
    /// signal fires.
    ///
    /// `WAIT` holds the connection it is sent on for up to `timeout` (and
    /// every request queued behind it): with this option, prefer a larger
    /// [`pool_size`](Self::pool_size). It narrows the failover window, it
    /// does not close it: replication stays asynchronous, and a replica
    /// that confirmed may still not be the one promoted (see the README's
    /// "Cluster and replicas").
    ///
    /// ```
    /// use std::time::Duration;
    /// let opts = lockyard::redis::RedisOptions::default()
    ///     .wait_for_replicas(1, Duration::from_millis(200));
    /// assert_eq!(opts.wait_for_replicas, Some((1, Duration::from_millis(200))));
    /// ```
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_for_replicas = Some((replicas, timeout));
        self
    }

    /// Sets a lock-delay (Consul's): when a holder's lease runs out without a
    /// release (the holder crashed, stalled or was cut off), nobody is
    /// granted that name for `delay` more, so that a holder which lost the
    /// lock without knowing it yet has that long to notice (its
    /// [`lost`](super::RedisLockGuard::lost) signal fires at the lease's end)
    /// before a second holder starts. A release frees the name at once.
    ///
    /// How: every grant, renewal and extend sets the key's expiry on the
    /// server to *TTL + delay*, while the holder's own validity still counts
    /// the TTL alone. A holder that keeps renewing never notices the
    /// difference; one that stops is lost at its lease's end, and its key
    /// lives `delay` longer; a release deletes the key as always. It costs
    /// nothing on the fast path: no extra command, key or script step,
    /// only a larger number in the same request. Waiters wake at the key's
    /// expiry, delay included. While the delay runs, `is_locked` is `true`
    /// and `owner` names the lost holder. It applies to the locks,
    /// read/write locks and semaphores of this client, and to each server
    /// of a Redlock built with these options.
    ///
    /// Every client writing a name should use the same delay: the delay is
    /// set by the holder's client.
    ///
    /// ```
    /// use std::time::Duration;
    /// let opts = lockyard::redis::RedisOptions::default()
    ///     .ttl(Duration::from_secs(10))
    ///     .lock_delay(Duration::from_secs(15));
    /// assert_eq!(opts.lock_delay, Some(Duration::from_secs(15)));
    /// ```
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// The TTL a grant, renewal or extend of a lease of `ttl` sets on the
    /// server: `ttl` plus the [`lock_delay`](Self::lock_delay).
    pub(crate) fn server_ttl(&self, ttl: Duration) -> Duration {
        ttl + self.lock_delay.unwrap_or_default()
    }

    crate::tls::tls_option_methods!(
        "redis::RedisOptions",
        "::new()",
        "for `rediss://` and `rediss+cluster://` URLs: the CA of a private or managed \
         Redis. Needs the feature `tls`; a plain `redis://` URL with a CA set is refused, \
         so a configuration meant for TLS never runs without it. The server's certificate \
         is always checked against the CA, its dates and the URL's host name; lockyard \
         has no switch to skip that."
    );

    /// The per-request timeout in force: the one set, or the default for
    /// this TTL (see [`op_timeout`](Self::op_timeout)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// assert_eq!(RedisOptions::new().request_timeout(), Duration::from_secs(2)); // 30 s TTL
    /// // A short lease: half of its validity (1 s - 12 ms drift).
    /// let short = RedisOptions::new().ttl(Duration::from_secs(1));
    /// assert_eq!(short.request_timeout(), Duration::from_millis(494));
    /// ```
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout_for(self.ttl)
    }

    /// The per-request timeout of an acquisition with a lease of `ttl`: the
    /// one set, or 2 s, or half of the lease's validity if that is less.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new();
    /// assert_eq!(opts.request_timeout_for(Duration::from_secs(60)), Duration::from_secs(2));
    /// assert!(opts.request_timeout_for(Duration::from_millis(500)) < Duration::from_millis(250));
    /// ```
    pub fn request_timeout_for(&self, ttl: Duration) -> Duration {
        self.op_timeout.unwrap_or_else(|| {
            let validity = ttl.saturating_sub(self.drift_for(ttl));
            DEFAULT_OP_TIMEOUT.min(validity / 2)
        })
    }

    /// The renewal interval used for a lease of `ttl`: the configured
    /// interval scaled to `ttl` (or `ttl / 3`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new().ttl(Duration::from_secs(30)).renew_interval(Duration::from_secs(6));
    /// // A lease of 60 s (`AcquireOptions::lease`) renews at the same ratio.
    /// assert_eq!(opts.renew_interval_for(Duration::from_secs(60)), Duration::from_secs(12));
    /// ```
    pub fn renew_interval_for(&self, ttl: Duration) -> Duration {
        match self.renew_interval {
            Some(every) if !self.ttl.is_zero() => {
                every.mul_f64(ttl.as_secs_f64() / self.ttl.as_secs_f64())
            }
            _ => ttl / 3,
        }
    }

    /// The drift margin used for a lease of `ttl`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new(); // default: 1 % of the TTL + 2 ms
    /// assert_eq!(opts.drift_for(Duration::from_secs(10)), Duration::from_millis(102));
    /// ```
    pub fn drift_for(&self, ttl: Duration) -> Duration {
        match self.drift {
            Some(d) if !self.ttl.is_zero() => d.mul_f64(ttl.as_secs_f64() / self.ttl.as_secs_f64()),
            _ => ttl / 100 + Duration::from_millis(2),
        }
    }

    /// Checks the options; every client validates them at connect time.
    pub(crate) fn validate(&self) -> Result<(), LockError> {
        let bad =
            |what: &'static str, reason: String| Err(LockError::InvalidArgument { what, reason });
        if self.key_prefix.len() > 256
            || self
                .key_prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_control())
        {
            return bad(
                "key prefix",
                format!(
                    "{:?} must be at most 256 bytes without `{{`, `}}` or control characters",
                    self.key_prefix
                ),
            );
        }
        validate_ttl(self.ttl)?;
        if self.drift_for(self.ttl) >= self.ttl / 2 {
            return bad(
                "drift",
                format!("{:?} must be under half the TTL", self.drift_for(self.ttl)),
            );
        }
        if let Some(every) = self.renew_interval
            && (every.is_zero() || every >= self.ttl - self.drift_for(self.ttl))
        {
            return bad(
                "renew interval",
                format!("{every:?} must be positive and shorter than the TTL minus the drift"),
            );
        }
        if self.pool_size == 0 {
            return bad("pool size", "must be at least 1".to_owned());
        }
        if let Some((replicas, wait)) = self.wait_for_replicas
            && (replicas == 0 || wait < Duration::from_millis(1) || wait >= self.request_timeout())
        {
            // `WAIT n 0` would block for ever; a wait as long as the request
            // timeout would time every grant out.
            return bad(
                "replica wait",
                format!(
                    "{replicas} replicas within {wait:?}: need at least one replica and a wait \
                     of at least 1 ms and under the op timeout ({:?})",
                    self.request_timeout()
                ),
            );
        }
        if let Some(delay) = self.lock_delay
            && (delay < Duration::from_millis(1)
                || (self.ttl + delay).as_millis() > u128::from(u32::MAX))
        {
            return bad(
                "lock delay",
                format!(
                    "{delay:?} must be at least 1 ms, and the TTL plus the delay at most {} ms",
                    u32::MAX
                ),
            );
        }
        self.check_lease(self.ttl)?;
        let op_timeout = self.request_timeout();
        if self.connect_timeout.is_zero() || op_timeout.is_zero() {
            return bad(
                "timeout",
                "connect and op timeouts must be positive".to_owned(),
            );
        }
        Ok(())
    }
}

impl RedisOptions {
    /// Checks a lease of `ttl` (the client's, or one acquisition's): whole
    /// milliseconds between 10 ms and ~49 days, and long enough that the
    /// per-request timeout is at most half of its validity (*ttl − drift*):
    /// otherwise an answer could grant a lease that has already ended.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] as above.
    pub(crate) fn check_lease(&self, ttl: Duration) -> Result<(), LockError> {
        validate_ttl(ttl)?;
        let validity = ttl.saturating_sub(self.drift_for(ttl));
        let op_timeout = self.request_timeout_for(ttl);
        if op_timeout > validity / 2 {
            return Err(LockError::InvalidArgument {
                what: "lease",
                reason: format!(
                    "the op timeout ({op_timeout:?}) must be at most half the lease's validity \
                     (TTL − drift = {validity:?}): an answer that slow could grant a lease that \
                     has already ended"
                ),
            });
        }
        Ok(())
    }

    /// The lease of one acquisition: `lease`, or the client's TTL.
    ///
    /// # Errors
    ///
    /// As [`check_lease`](Self::check_lease).
    pub(crate) fn lease_for(&self, lease: Option<Duration>) -> Result<Duration, LockError> {
        let ttl = lease.unwrap_or(self.ttl);
        self.check_lease(ttl)?;
        Ok(ttl)
    }
}

/// The per-request timeout when the lease allows it.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Leases are whole milliseconds on the server, between 10 ms and ~49 days.
pub(crate) fn validate_ttl(ttl: Duration) -> Result<(), LockError> {
    if ttl < Duration::from_millis(10) || ttl.as_millis() > u128::from(u32::MAX) {
        return Err(LockError::InvalidArgument {
            what: "ttl",
            reason: format!("{ttl:?} must be between 10 ms and {} ms", u32::MAX),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_derived() {
        let o = RedisOptions::default();
        o.validate().unwrap();
        assert_eq!(
            o.renew_interval_for(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            o.drift_for(Duration::from_secs(1)),
            Duration::from_millis(12)
        );
    }

    #[test]
    fn bad_options_are_refused() {
        for o in [
            RedisOptions::default().key_prefix("a{b"),
            RedisOptions::default().ttl(Duration::from_millis(1)),
            RedisOptions::default().renew_interval(Duration::from_secs(31)),
            RedisOptions::default().drift(Duration::from_secs(20)),
            RedisOptions::default().pool_size(0),
            RedisOptions::default().op_timeout(Duration::ZERO),
            RedisOptions::default().lock_delay(Duration::ZERO),
            RedisOptions::default().lock_delay(Duration::from_secs(50 * 86_400)),
        ] {
            assert!(o.validate().unwrap_err().is_invalid_input(), "{o:?}");
        }
    }
}
