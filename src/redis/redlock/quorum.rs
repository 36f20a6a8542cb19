//! The quorum over a Redlock guard's per-server leases: pure math, and the
//! [`Observer`] the servers' watchdogs tell of every change.
//!
//! Each granting server's lease is an ordinary lease of that server's
//! client, renewed in its watchdog's batches with the one validity rule.
//! The Redlock lock is held while a majority of them is: its deadline is
//! the `needed`-th latest of the members' deadlines (after it, fewer than
//! `needed` servers can still be sure the key is ours), it is lost as soon
//! as fewer than `needed` members are left, and it is suspect while fewer
//! than `needed` members are both valid and not suspect. No task of its
//! own: the members' watchdogs call [`Quorum::changed`], and every check
//! compares the published deadline with the clock when it is asked.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lost::{LeaseDeadline, Lost, Moment};
use crate::redis::lease::Observer;

/// One server's lease as the quorum last heard of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Member {
    /// Certainly valid until then; `None`: lost, or never granted.
    pub(super) end: Option<Moment>,
    /// Its last renewal failed.
    pub(super) suspect: bool,
}

impl Member {
    pub(super) const ABSENT: Member = Member {
        end: None,
        suspect: false,
    };
}

/// The `needed`-th latest deadline among `members`: until then at least
/// `needed` of them are valid. `None` when fewer than `needed` are left.
///
/// Taken on each clock apart: the `needed`-th latest end on the monotonic
/// clock and the `needed`-th latest on the boot clock each bound the time
/// `needed` members certainly hold.
pub(super) fn quorum_end(members: &[Member], needed: usize) -> Option<Moment> {
    let ends: Vec<Moment> = members.iter().filter_map(|m| m.end).collect();
    if needed == 0 || ends.len() < needed {
        return None;
    }
    let mut at: Vec<Instant> = ends.iter().map(|e| e.at).collect();
    at.sort_unstable_by(|a, b| b.cmp(a));
    let boot: Option<Vec<Duration>> = ends.iter().map(|e| e.boot).collect();
    let boot = boot.map(|mut b| {
        b.sort_unstable_by(|x, y| y.cmp(x));
        b[needed - 1]
    });
    Some(Moment {
        at: at[needed - 1],
        boot,
    })
}

/// Fewer than `needed` members are valid and not suspect (at `now`).
pub(super) fn quorum_suspect(members: &[Member], needed: usize, now: Instant) -> bool {
    members
        .iter()
        .filter(|m| !m.suspect && m.end.is_some_and(|end| end.at > now))
        .count()
        < needed
}

/// A Redlock guard's quorum: its lost signal over its members' leases.
pub(super) struct Quorum {
    resource: String,
    needed: usize,
    members: Mutex<Vec<Member>>,
    end: LeaseDeadline,
    lost: CancellationToken,
}

impl Quorum {
    /// A quorum over `members` (as granted), of which `needed` must hold.
    /// Lost at once when fewer than `needed` were granted.
    pub(super) fn new(resource: &str, members: Vec<Member>, needed: usize) -> Self {
        let end = quorum_end(&members, needed);
        let lost = CancellationToken::new();
        if end.is_none() {
            lost.cancel();
        }
        Self {
            resource: resource.to_owned(),
            needed,
            end: LeaseDeadline::ending(end.unwrap_or_else(Moment::now)),
            members: Mutex::new(members),
            lost,
        }
    }

    /// The lost signal: the token cancelled when the majority is gone, and
    /// the quorum's deadline every check compares with the clock.
    pub(super) fn lost(&self) -> Lost {
        Lost::with_deadline(self.lost.clone(), self.end.clone())
    }

    /// What is left of the quorum's validity (zero once lost).
    pub(super) fn remaining(&self) -> std::time::Duration {
        if self.lost.is_cancelled() {
            return std::time::Duration::ZERO;
        }
        self.end.remaining()
    }

    fn declare_lost(&self, why: &str) {
        if !self.lost.is_cancelled() {
            tracing::warn!(resource = %self.resource, reason = why, "Redlock lost");
            self.lost.cancel();
        }
    }
}

impl Observer for Quorum {
    fn changed(&self, member: usize, end: Option<Moment>, suspect: bool) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = members.get_mut(member) else {
            return;
        };
        *slot = Member { end, suspect };
        match quorum_end(&members, self.needed) {
            None => self.declare_lost("too few servers still hold the lock for a majority"),
            Some(at) => {
                // A deadline already passed stays passed (invariant 3).
                if !self.end.set_end(at) {
                    self.declare_lost("no majority confirmed a renewal within the validity");
                }
                self.end
                    .set_suspect(quorum_suspect(&members, self.needed, Instant::now()));
            }
        }
    }
}

impl fmt::Debug for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quorum")
            .field("resource", &self.resource)
            .field("needed", &self.needed)
            .field("lost", &self.lost.is_cancelled())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn mono(at: Instant) -> Moment {
        Moment { at, boot: None }
    }

    fn at(base: Instant, ms: u64) -> Member {
        Member {
            end: Some(Moment {
                at: base + Duration::from_millis(ms),
                boot: None,
            }),
            suspect: false,
        }
    }

    #[test]
    fn the_quorum_ends_with_its_needed_th_latest_member() {
        let t = Instant::now();
        let m = [
            at(t, 300),
            Member::ABSENT,
            at(t, 100),
            at(t, 500),
            at(t, 200),
        ];
        assert_eq!(
            quorum_end(&m, 3).map(|e| e.at),
            Some(t + Duration::from_millis(200))
        );
        assert_eq!(
            quorum_end(&m, 1).map(|e| e.at),
            Some(t + Duration::from_millis(500))
        );
        assert_eq!(
            quorum_end(&m, 4).map(|e| e.at),
            Some(t + Duration::from_millis(100))
        );
        assert_eq!(quorum_end(&m, 5), None);
        assert_eq!(quorum_end(&m, 0), None);
    }

    #[test]
    fn suspect_when_fewer_than_needed_are_healthy() {
        let t = Instant::now();
        let mut m = [at(t, 300), at(t, 400), at(t, 500)];
        assert!(!quorum_suspect(&m, 2, t));
        m[0].suspect = true;
        assert!(!quorum_suspect(&m, 2, t));
        m[1].suspect = true;
        assert!(quorum_suspect(&m, 2, t));
        // A member past its end counts as gone, suspect or not.
        let m = [at(t, 300), at(t, 0), Member::ABSENT];
        assert!(quorum_suspect(&m, 2, t + Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn members_lost_below_the_majority_fire_lost() {
        let t = Instant::now();
        let q = Quorum::new("r", vec![at(t, 10_000), at(t, 10_000), at(t, 10_000)], 2);
        let lost = q.lost();
        assert!(!lost.is_lost());
        q.changed(0, None, true);
        assert!(!lost.is_lost(), "two of three still hold it");
        assert_eq!(lost.state(), crate::LeaseState::Held);
        q.changed(1, Some(mono(t + Duration::from_secs(10))), true);
        assert_eq!(lost.state(), crate::LeaseState::Suspect);
        q.changed(1, Some(mono(t + Duration::from_secs(20))), false);
        assert_eq!(lost.state(), crate::LeaseState::Held);
        q.changed(2, None, true);
        assert!(lost.is_lost());
        // Lost for good, whatever comes after.
        q.changed(2, Some(mono(t + Duration::from_secs(30))), false);
        assert!(lost.is_lost());
    }

    #[tokio::test]
    async fn the_deadline_follows_the_majority_and_never_returns() {
        let t = Instant::now();
        let q = Quorum::new("r", vec![at(t, 60_000), at(t, 60_000), at(t, 60_000)], 2);
        // Two members' ends pulled into the past: the quorum's end passed.
        q.changed(0, Some(mono(t)), false);
        q.changed(1, Some(mono(t)), false);
        assert!(q.lost().is_lost());
        q.changed(0, Some(mono(t + Duration::from_secs(60))), false);
        assert!(q.lost().is_lost(), "a passed deadline stays passed");
    }

    /// Three watchdogs (threads) report at once, each its own member's
    /// renewals moving its end forward and back, then its loss; a fourth
    /// thread samples. Once lost, the quorum never reads held again, and
    /// it ends lost (every member lost) with the signal fired.
    #[test]
    fn members_reported_concurrently_never_unlose_the_quorum() {
        for _ in 0..50 {
            let t = Instant::now();
            let q = Arc::new(Quorum::new(
                "r",
                vec![at(t, 60_000), at(t, 60_000), at(t, 60_000)],
                2,
            ));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sampler = {
                let (q, stop) = (q.clone(), stop.clone());
                std::thread::spawn(move || {
                    let lost = q.lost();
                    let mut seen_lost = false;
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        let now = lost.is_lost();
                        assert!(!seen_lost || now, "the quorum read held after lost");
                        seen_lost |= now;
                    }
                })
            };
            let members: Vec<_> = (0..3)
                .map(|m| {
                    let q = q.clone();
                    std::thread::spawn(move || {
                        for i in 0..200u64 {
                            let end = t + Duration::from_millis(60_000 + (i * 7 + m as u64) % 50);
                            q.changed(
                                m,
                                Some(Moment {
                                    at: end,
                                    boot: None,
                                }),
                                i % 3 == 0,
                            );
                        }
                        q.changed(m, None, true);
                    })
                })
                .collect();
            for m in members {
                m.join().expect("member thread");
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
            sampler.join().expect("sampler");
            assert!(q.lost().is_lost());
            assert!(q.remaining().is_zero());
        }
    }

    #[test]
    fn too_few_granted_is_lost_at_once() {
        let t = Instant::now();
        let q = Quorum::new("r", vec![at(t, 60_000), Member::ABSENT, Member::ABSENT], 2);
        assert!(q.lost().is_lost());
        assert!(q.remaining().is_zero());
    }
}
