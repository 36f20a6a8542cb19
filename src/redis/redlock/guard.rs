//! [`RedlockGuard`]: a quorum of the same holds every other Redis guard
//! has, one per granting server, each renewed in its server's watchdog
//! batch with the one validity rule; the guard's lost signal is their
//! [`Quorum`]'s. The guard methods are the lease guards' own
//! (`lease_guard!`), without a public fencing token.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::quorum::{Member, Quorum};
use super::{RedlockInner, per_server_timeout, server_timeout};
use crate::error::LockError;
use crate::lease::{LeaseHold, lease_guard};
use crate::lost::{Lost, Moment};
use crate::options::Mode;
use crate::redis::acquire::held::Hold;
use crate::redis::acquire::waiting::ScriptCall;
use crate::redis::context::Context;
use crate::redis::context::ops::PlainLock;
use crate::redis::lease::Observer;
use crate::redis::protocol::scripts;
use crate::stats::Held;

/// A lock held on a majority of a [`Redlock`](crate::redis::Redlock)'s
/// servers. Renewed while it lives, each server's lease in that server's
/// watchdog batch; released on every server when dropped (in a background
/// task) or by [`release`](Self::release).
///
/// [`lost`](Self::lost) fires when fewer than a majority of the servers can
/// still be sure the key is ours: the majority's validity ran out without
/// renewals confirmed (the validity of a Redlock lock is the majority's:
/// the latest moment until which a majority of the servers' leases is
/// certainly valid), or too many servers say the key is no longer ours.
/// [`state`](Self::state) is suspect while fewer than a majority's renewals
/// are going through.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// # use lockyard::redis::{RedisOptions, Redlock};
/// # let redlock = Redlock::connect(&["redis://127.0.0.1:7001"], RedisOptions::default()).await?;
/// let guard = redlock.try_acquire("compaction").await?;
/// println!("valid for at least {:?}", guard.validity());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RedlockGuard {
    pub(super) held: RedlockHold,
}

lease_guard!(RedlockGuard, "redis", "Redlock lock", unfenced);

impl RedlockGuard {
    /// The highest of the granting servers' fencing counters.
    ///
    /// **Best effort only: it can go backwards** between successive holders
    /// (their majorities need not share the server with the highest
    /// counter), and a server restarted without persistence restarts its
    /// counter. Do not use it to reject stale writers; see the
    /// [`Redlock`](crate::redis::Redlock) docs.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// # use lockyard::redis::{RedisOptions, Redlock};
    /// # let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// # let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// let guard = redlock.acquire("compaction", std::time::Duration::from_secs(5)).await?;
    /// // Fine for logs and metrics; not for rejecting stale writers.
    /// tracing::info!(fence = guard.best_effort_fencing_token(), "compaction started");
    /// # Ok(())
    /// # }
    /// ```
    pub fn best_effort_fencing_token(&self) -> u64 {
        self.held.fencing
    }

    /// How long the lock is still certainly held if no further renewal
    /// succeeds (zero once it is not).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// # use lockyard::redis::{RedisOptions, Redlock};
    /// # let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// # let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// let guard = redlock.acquire("compaction", std::time::Duration::from_secs(5)).await?;
    /// let step = std::time::Duration::from_secs(2);
    /// if guard.validity() < step {
    ///     guard.release().await?; // too little time left to start another step
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn validity(&self) -> Duration {
        self.held.quorum.remaining()
    }
}

/// The inside of a [`RedlockGuard`]: one [`Hold`] per granting server, and
/// their quorum.
pub(super) struct RedlockHold {
    inner: Arc<RedlockInner>,
    name: String,
    /// The owner value set on every server.
    value: String,
    fencing: u64,
    /// Per server, its hold if it granted the lock (`None` once released).
    members: Vec<Option<Hold>>,
    quorum: Arc<Quorum>,
    /// Counts the hold in the stats registry (set once acquired).
    pub(super) stats: Option<Held>,
}

impl RedlockHold {
    /// Takes over an attempt's grants: one hold per granting server, each
    /// registered with its server's watchdog, reported to the quorum.
    ///
    /// `grants[n]` is server `n`'s client and fencing counter if it granted
    /// `value`'s lock in the attempt sent at `sent_at`. `None` if a majority
    /// of the grants is no longer certainly valid (invariant 1): the caller
    /// undoes them (dropping what this made releases in the background).
    pub(super) fn new(
        inner: &Arc<RedlockInner>,
        name: &str,
        value: &str,
        grants: Vec<Option<(Context, u64)>>,
        sent_at: Moment,
    ) -> Option<Self> {
        let end = crate::lease::grant_end(sent_at, inner.ttl, inner.drift);
        let initial = grants
            .iter()
            .map(|g| match g {
                Some(_) => Member {
                    end: Some(end),
                    suspect: false,
                },
                None => Member::ABSENT,
            })
            .collect();
        let quorum = Arc::new(Quorum::new(name, initial, inner.quorum));
        let value: Arc<str> = value.into();
        let shared_name: Arc<str> = name.into();
        let fencing = grants.iter().flatten().map(|(_, f)| *f).max().unwrap_or(0);
        let mut members = Vec::with_capacity(grants.len());
        for (n, grant) in grants.into_iter().enumerate() {
            let Some((client, fence)) = grant else {
                members.push(None);
                continue;
            };
            let keys = client.resource_keys(name);
            let lock_key: Arc<[String]> = Arc::from(vec![keys.lock.clone()]);
            let release = ScriptCall {
                script: scripts::RELEASE.get(client.is_cluster()),
                keys: lock_key.clone(),
                args: Arc::new([value.clone(), keys.channel.clone()]),
            };
            // The release's arguments (see `extend.lua`).
            let renew = ScriptCall {
                script: &scripts::EXTEND,
                keys: lock_key,
                args: release.args.clone(),
            };
            let observer: Arc<dyn Observer> = quorum.clone();
            let hold = Hold::member(
                &client,
                &shared_name,
                fence,
                sent_at,
                inner.ttl,
                inner.drift,
                renew,
                release,
                (observer, n),
            );
            match hold {
                Ok(hold) => members.push(Some(hold)),
                Err(_expired) => {
                    // Not registered: it never reports; count it out here.
                    quorum.changed(n, None, true);
                    members.push(None);
                }
            }
        }
        let hold = Self {
            inner: inner.clone(),
            name: name.to_owned(),
            value: value.to_string(),
            fencing,
            members,
            quorum,
            stats: None,
        };
        // Dropped if not valid: each member's release runs in the
        // background.
        (!hold.is_lost()).then_some(hold)
    }
}

impl LeaseHold for RedlockHold {
    fn resource(&self) -> &str {
        &self.name
    }

    fn mode(&self) -> Mode {
        Mode::Exclusive
    }

    /// Best effort (see `best_effort_fencing_token`).
    fn fencing_token(&self) -> u64 {
        self.fencing
    }

    /// `None`: Redlock cannot issue a strictly increasing token (see
    /// [`RedlockGuard::best_effort_fencing_token`]).
    fn fencing(&self) -> Option<u64> {
        None
    }

    fn lost(&self) -> Lost {
        self.quorum.lost()
    }

    /// Extends every member at once (each bounded by the per-server
    /// timeout); `Ok` when a majority confirmed. Members that did not are
    /// renewed by their watchdogs as before; one that says the key is no
    /// longer ours is out of the quorum for good.
    async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        if self.is_lost() {
            return Err(LockError::Lost {
                resource: self.name.clone(),
            });
        }
        // A TTL the servers' clients refuse is the caller's error, not a
        // failure of each server.
        self.inner.redis.check_lease(ttl)?;
        let drift = self.inner.drift_for(ttl);
        if drift >= ttl {
            return Err(LockError::InvalidArgument {
                what: "ttl",
                reason: format!("drift {drift:?} leaves no validity out of a TTL of {ttl:?}"),
            });
        }
        let per_server = per_server_timeout(self.inner.ttl.min(ttl));
        let answers = join_all(self.members.iter().flatten().map(|hold| async move {
            match tokio::time::timeout(per_server, hold.extend_with(ttl, Some(drift))).await {
                Ok(answer) => answer,
                Err(_) => Err(server_timeout(&self.name, "extend", per_server)),
            }
        }))
        .await;
        let mut confirmed = 0;
        let mut errors = Vec::new();
        for answer in answers {
            match answer {
                Ok(()) => confirmed += 1,
                Err(e) => errors.push(e),
            }
        }
        if self.is_lost() {
            return Err(LockError::Lost {
                resource: self.name.clone(),
            });
        }
        if confirmed >= self.inner.quorum {
            return Ok(());
        }
        Err(LockError::NoQuorum {
            resource: self.name.clone(),
            granted: confirmed,
            needed: self.inner.quorum,
            total: self.inner.total(),
            errors,
        })
    }

    /// Releases on every server that granted it, at once (each bounded by
    /// the per-server timeout; a member whose release is cut off is
    /// released again in the background).
    async fn release(&mut self) -> Result<(), LockError> {
        // Read before any member stops renewing: a lock lost (or past its
        // validity) stays lost, and its release never reports success
        // (invariant 3).
        let lost = self.is_lost();
        let inner = self.inner.clone();
        let per_server = per_server_timeout(inner.ttl);
        let (name, value) = (&self.name, &self.value);
        // The servers that did not grant it are asked too: one whose grant
        // was applied but whose answer was lost holds our key.
        let others: Vec<usize> = (0..inner.total())
            .filter(|&n| self.members.get(n).is_none_or(Option::is_none))
            .collect();
        let members = join_all(self.members.iter_mut().flatten().map(|hold| async move {
            match tokio::time::timeout(per_server, hold.release()).await {
                Ok(answer) => answer,
                Err(_) => Err(server_timeout(name, "release", per_server)),
            }
        }));
        let others = release_on(&inner, name, value, &others);
        let (members, others) = futures::join!(members, others);
        // Every member's release ran (or goes on in the background).
        self.members.clear();
        let mut confirmed = 0;
        let mut not_ours = 0;
        let mut errors = Vec::new();
        for answer in members {
            match answer {
                // The key was ours and is gone (a member lease that had run
                // out reports Lost, but its key was still ours).
                Ok(()) | Err(LockError::Lost { .. }) => confirmed += 1,
                Err(LockError::NotHeld { .. }) => not_ours += 1,
                Err(e) => errors.push(e),
            }
        }
        for answer in others {
            match answer {
                Ok(true) => confirmed += 1,
                Ok(false) => not_ours += 1,
                Err(e) => errors.push(e),
            }
        }
        let (quorum, total) = (self.inner.quorum, self.inner.total());
        let answered = total - errors.len();
        if confirmed >= quorum && lost {
            // The keys were still ours and are gone, but the validity had
            // run out first: someone could have held it meanwhile.
            Err(LockError::Lost {
                resource: self.name.clone(),
            })
        } else if confirmed >= quorum {
            Ok(())
        } else if answered >= quorum || not_ours > total - quorum {
            Err(LockError::NotHeld {
                resource: self.name.clone(),
            })
        } else {
            Err(LockError::NoQuorum {
                resource: self.name.clone(),
                granted: confirmed,
                needed: quorum,
                total,
                errors,
            })
        }
    }
}

impl Drop for RedlockHold {
    fn drop(&mut self) {
        if let Some(stats) = &mut self.stats
            && self.quorum.lost().is_lost()
        {
            stats.lost();
        }
        // Each member stops renewing and releases in the background; a
        // server that did not grant it may still hold our key (its answer
        // lost): it is asked too.
        let granted = self.members.iter().flatten().count();
        let released = self.members.is_empty();
        self.members.clear();
        if !released && granted < self.inner.total() {
            super::spawn_release_all(
                self.inner.clone(),
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.value),
                vec![None; self.inner.total()],
            );
        }
    }
}

/// Compare-and-delete of `value`'s key on the servers `which` (each bounded
/// by the per-server timeout): `true` where it was ours.
async fn release_on(
    inner: &RedlockInner,
    name: &str,
    value: &str,
    which: &[usize],
) -> Vec<Result<bool, LockError>> {
    let per_server = per_server_timeout(inner.ttl);
    join_all(
        which
            .iter()
            .filter_map(|&n| inner.servers.get(n))
            .map(|server| async move {
                match tokio::time::timeout(per_server, async {
                    let client = inner.client(server).await?;
                    PlainLock::new(&client.ctx, name, value).release().await
                })
                .await
                {
                    Ok(answer) => answer,
                    Err(_) => Err(server_timeout(name, "release", per_server)),
                }
            }),
    )
    .await
}
