//! [`PgLocks`]'s public face: connecting, handles, the plain lock's
//! methods, looking and shutting down. The facade: nothing in `postgres/`
//! imports it.

use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::Host;

use super::context::{PgLocks, with_resource};
use super::guard::PgLockGuard;
use super::keys::PgKey;
use super::listing::{self, PgLockInfo};
use super::lock::PgLock;
use super::options::PgOptions;
use super::session::Session;
use super::tls::{connector, parse_url};
use crate::error::LockError;
use crate::options::AcquireOptions;

impl PgLocks {
    /// Connects with default [`PgOptions`].
    ///
    /// `url` is a libpq-style URL or key-value string
    /// (`postgres://user:password@host:port/database`,
    /// `host=… user=… dbname=…`), as tokio-postgres parses it, with
    /// libpq's five `sslmode`s (feature `tls`; without one, `prefer`):
    /// the [module docs](super#tls) say what each checks.
    ///
    /// Point it at the server itself, or at a pooler in **session**
    /// pooling. PgBouncer in transaction or statement pooling cannot hold
    /// session locks (each transaction may run on another server session);
    /// an acquisition that finds its statement run by another backend than
    /// the connection's takes nothing and fails with
    /// [`LockError::Unsupported`] (see the [module docs](super) for what is
    /// detected and when).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::postgres::PgLocks;
    ///
    /// let locks = PgLocks::connect("postgres://app:secret@127.0.0.1:5432/app").await?;
    /// # drop(locks);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`LockError::InvalidArgument`] for a malformed URL, an unknown
    ///   `sslmode`, or TLS files that cannot be read or parsed.
    /// - [`LockError::Tls`] when TLS cannot be set up, with a
    ///   [`TlsProblem`](crate::TlsProblem) saying why: the server's
    ///   certificate is untrusted, expired or for another host; the server
    ///   has no TLS and the URL requires it; it wants a client certificate;
    ///   it requires TLS and the URL says `disable`; this build has no
    ///   feature `tls`.
    /// - [`LockError::Unavailable`] when the server cannot be reached within
    ///   `connect_timeout`.
    /// - [`LockError::Backend`] when it refuses us (a wrong password, an
    ///   unknown database or role).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is left behind but a closed connection.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// Connects with the given options: checks them and the URL, and opens
    /// one connection (bounded by `connect_timeout`), kept for the first
    /// acquisition.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::postgres::{PgLocks, PgOptions};
    ///
    /// let opts = PgOptions::default().keepalive(Duration::from_secs(2)).fencing(false);
    /// let locks = PgLocks::connect_with("postgres://app@127.0.0.1/app", opts).await?;
    /// # drop(locks);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), and [`LockError::InvalidArgument`]
    /// for options out of range.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, LockError> {
        options.validate()?;
        // tokio-postgres knows three sslmodes; libpq's five are taken out
        // first.
        let (mut config, sslmode) = parse_url(url)?;
        let server = server_of(&config);
        let (ssl_mode, tls) = connector(sslmode, &options.tls, &server)?;
        config.ssl_mode(ssl_mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("lockyard");
        }
        let first = Session::open(
            &config,
            &tls,
            &server,
            options.connect_timeout,
            options.keepalive,
        )
        .await
        .map_err(|e| with_resource(e, &server))?;
        let client = PgLocks::from_parts(config, tls, options, server);
        client.put_back(first);
        Ok(client)
    }

    /// A handle to the lock `name`, its key from the client's
    /// [`PgKeyMode`](super::PgKeyMode).
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let lock = locks.lock("billing")?;
    /// # drop(lock);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name the key mode refuses.
    pub fn lock(&self, name: &str) -> Result<PgLock, LockError> {
        let key = self.options().key_mode.key(name)?;
        Ok(PgLock::new(self, name, key))
    }

    /// A handle to the advisory lock `key`, called `name` (in errors,
    /// stats and the fence table's record): no mapping.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// use lockyard::postgres::PgKey;
    /// let lock = locks.lock_key("legacy-job", PgKey::Single(42));
    /// # drop(lock);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock_key(&self, name: &str, key: PgKey) -> PgLock {
        PgLock::new(self, name, key)
    }

    /// Acquires `name` exclusively, waiting at most `timeout`.
    ///
    /// The wait is the server's: one `pg_advisory_lock` under `SET LOCAL
    /// lock_timeout` in a transaction, on a connection of its own, woken by
    /// the server the moment the holder unlocks (no polling). A first
    /// `pg_try_advisory_lock` makes the uncontended case one round trip.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let guard = locks.acquire("billing", std::time::Duration::from_secs(5)).await?;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`LockError::Timeout`] if the lock stayed held; a `lock_timeout`
    ///   is only reported once `pg_locks` confirms the lock was not
    ///   granted just as it fired, and names a holder's backend pid.
    /// - [`LockError::Backend`] if the server found a deadlock (40P01) or
    ///   refused a request (permissions, the fence table).
    /// - [`LockError::Unavailable`] if the server cannot be reached, or a
    ///   request other than the wait took longer than `op_timeout`.
    /// - [`LockError::InvalidName`] for a name the key mode refuses.
    /// - [`LockError::Unsupported`] if a pooler in transaction or statement
    ///   pooling ran the request on another server session than the
    ///   connection's (nothing is taken); see [`connect`](Self::connect).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future never leaves the lock held: if a request that
    /// may take the lock is in flight, a background task cancels a wait
    /// still blocked on the server (`CancelToken`), unlocks everything the
    /// connection holds and confirms that in `pg_locks` before the
    /// connection is reused; if any of that fails, the connection is
    /// closed, and the server frees its locks with the session.
    pub async fn acquire(&self, name: &str, timeout: Duration) -> Result<PgLockGuard, LockError> {
        self.lock(name)?.acquire(timeout).await
    }

    /// Acquires `name` if it is free now (`pg_try_advisory_lock`).
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// match locks.try_acquire("billing").await {
    ///     Ok(guard) => guard.release().await?,
    ///     Err(e) if e.is_would_block() => println!("busy"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if held; otherwise as
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self, name: &str) -> Result<PgLockGuard, LockError> {
        self.lock(name)?.try_acquire().await
    }

    /// Acquires `name` in `options.mode` (shared: `pg_advisory_lock_shared`),
    /// waiting at most `options.timeout` (`None`: for ever).
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// use lockyard::AcquireOptions;
    /// let reader = locks.acquire_with("catalog", &AcquireOptions::shared()).await?;
    /// # drop(reader);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with(
        &self,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<PgLockGuard, LockError> {
        self.lock(name)?.acquire_with(options).await
    }

    /// Whether any session of the database holds `name` now.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// println!("{}", locks.is_locked("billing").await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PgLock::is_locked`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self, name: &str) -> Result<bool, LockError> {
        self.lock(name)?.is_locked().await
    }

    /// Every advisory lock granted in the database (lockyard's or not),
    /// with the holder's backend pid and, where the fence table recorded
    /// it, the name.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// for info in locks.list().await? {
    ///     println!("{:?} pid {}", info.name, info.pid);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] if the server cannot be reached;
    /// [`LockError::Backend`] if it refuses the query.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn list(&self) -> Result<Vec<PgLockInfo>, LockError> {
        listing::list(self).await
    }

    /// Waits for the unlocks of dropped guards and the clean-ups of
    /// cancelled acquisitions still running in the background (each is
    /// bounded by `op_timeout`), then closes the idle connections.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) {
    /// locks.shutdown().await;
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping it stops the waiting; the background work goes on.
    pub async fn shutdown(&self) {
        let tasks = &self.inner.tasks;
        tasks.close();
        tasks.wait().await;
        tasks.reopen();
        self.close_idle();
    }
}

/// `host:port` of the first host, for messages.
fn server_of(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}
