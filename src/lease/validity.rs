//! How long a lease is certainly still ours: the one rule every Redis
//! primitive, the watchdog and Redlock use (invariants 1 and 2 of
//! [`super`]).
//!
//! The server's lease ends at *apply time + TTL* of the **last request
//! applied** to it (the acquisition, a renewal or an extend). The client
//! never knows apply times, only that a request was applied after it was
//! sent and before its reply arrived. Requests on different connections (or
//! a request whose reply never came) may have been applied in any order,
//! so [`Validity`] keeps every request that could still be the last one
//! applied and assumes the worst of them:
//!
//! - the *anchor* is the send time of the latest-sent request confirmed to
//!   have renewed the lease;
//! - the last request applied is either the anchor's or one whose reply
//!   came after the anchor was sent, or never came (a *candidate*): a request
//!   answered before the anchor was even sent was applied before it;
//! - a candidate `C` applied last leaves the lease ending no earlier than
//!   `max(anchor, sent(C)) + ttl(C)`;
//!
//! so the lease is certainly ours until the minimum of that over the anchor
//! and every candidate, less each request's drift margin. A request sent
//! counts as a candidate from the moment it is sent (it may be applied at
//! any time after), which is how a renewal with a short TTL landing after an
//! extend to a long one can never leave the holder believing the long one.
//!
//! Send times, and so the deadline, are [`Moment`]s: kept on the boot
//! clock as well as the monotonic one from the send on, so that a suspend
//! between a request's send and its reply cannot place the lease's end
//! later on the boot clock than the server's TTL runs.
//!
//! Pure bookkeeping: no clock is read here, callers pass the times.

use std::time::Duration;

use tokio::time::Instant;

use crate::lost::Moment;

/// A request on a lease, as far as validity is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    id: u64,
    sent_at: Moment,
    /// TTL minus drift margin: how long after its application it counts.
    counts_for: Duration,
    /// When its confirming reply arrived; `None` while unanswered (or for
    /// ever, if its outcome is unknown).
    replied: Option<Instant>,
}

/// The validity of one lease; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Validity {
    anchor: Request,
    /// Candidates besides the anchor.
    others: Vec<Request>,
    next_id: u64,
    deadline: Moment,
}

/// One request begun with [`Validity::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestId(u64);

/// When a grant sent at `sent_at` with `ttl` stops being certainly ours
/// (invariant 1): `sent_at + ttl − drift`.
pub(crate) fn grant_end(sent_at: Moment, ttl: Duration, drift: Duration) -> Moment {
    sent_at.after(ttl.saturating_sub(drift))
}

impl Validity {
    /// A lease granted by a request sent at `sent_at` (taken *before* the
    /// request was written) carrying `ttl`, whose answer was in by
    /// `replied`.
    pub(crate) fn granted(
        sent_at: Moment,
        replied: Instant,
        ttl: Duration,
        drift: Duration,
    ) -> Self {
        let anchor = Request {
            id: 0,
            sent_at,
            counts_for: ttl.saturating_sub(drift),
            replied: Some(replied),
        };
        Self {
            anchor,
            others: Vec::new(),
            next_id: 1,
            deadline: grant_end(sent_at, ttl, drift),
        }
    }

    /// Until when the lease is certainly ours.
    pub(crate) fn deadline(&self) -> Moment {
        self.deadline
    }

    /// The send time of the latest confirmed renewal (or the grant), on the
    /// monotonic clock.
    pub(crate) fn anchor(&self) -> Instant {
        self.anchor.sent_at.at
    }

    /// A renewal or extend carrying `ttl` is about to be sent: from now on
    /// it may be applied at any time, so it counts at once.
    pub(crate) fn begin(&mut self, sent_at: Moment, ttl: Duration, drift: Duration) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.others.push(Request {
            id,
            sent_at,
            counts_for: ttl.saturating_sub(drift),
            replied: None,
        });
        self.recompute();
        RequestId(id)
    }

    /// The server answered that request `id` renewed the lease, at `now`.
    pub(crate) fn confirmed(&mut self, id: RequestId, now: Instant) {
        let Some(i) = self.others.iter().position(|r| r.id == id.0) else {
            return;
        };
        self.others[i].replied = Some(now);
        if self.others[i].sent_at.at > self.anchor.sent_at.at {
            let new_anchor = self.others.swap_remove(i);
            let old = std::mem::replace(&mut self.anchor, new_anchor);
            self.others.push(old);
        }
        let anchor = self.anchor.sent_at.at;
        // Answered before the anchor was sent: applied before it, so it can
        // no longer be the last one applied. Answered at the very instant
        // the anchor was sent (a clock that did not tick), it may have been
        // applied after it: it keeps counting.
        self.others
            .retain(|r| r.replied.is_none_or(|at| at >= anchor));
        self.recompute();
    }

    /// Request `id` was certainly not applied (the server answered with an
    /// error): it no longer counts.
    pub(crate) fn refused(&mut self, id: RequestId) {
        self.others.retain(|r| r.id != id.0);
        self.recompute();
    }

    /// Request `id` has no known outcome (timed out, connection lost, the
    /// caller gave up): it may still be applied later, so it keeps counting.
    /// Requests of unknown outcome with the same TTL are merged into the
    /// earliest sent (the one that bounds the lease the most), so repeated
    /// timeouts do not grow the record.
    pub(crate) fn unknown(&mut self, id: RequestId) {
        let Some(i) = self.others.iter().position(|r| r.id == id.0) else {
            return;
        };
        let this = self.others[i];
        if self.others.iter().any(|r| {
            r.id != this.id
                && r.replied.is_none()
                && r.counts_for == this.counts_for
                && r.sent_at.at <= this.sent_at.at
        }) {
            self.others.swap_remove(i);
        }
        self.recompute();
    }

    /// Number of requests still counted besides the anchor (for tests).
    #[cfg(test)]
    pub(crate) fn candidates(&self) -> usize {
        self.others.len()
    }

    fn recompute(&mut self) {
        let anchor = self.anchor.sent_at;
        let bound = |r: &Request| r.sent_at.later(anchor).after(r.counts_for);
        self.deadline = self
            .others
            .iter()
            .map(bound)
            .fold(bound(&self.anchor), Moment::earlier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const NO_DRIFT: Duration = Duration::ZERO;

    /// `at` on the monotonic clock alone.
    fn m(at: Instant) -> Moment {
        Moment { at, boot: None }
    }

    #[test]
    fn a_grant_counts_from_its_send_time_less_drift() {
        let t0 = Instant::now();
        let v = Validity::granted(m(t0), t0, 3 * S, Duration::from_millis(40));
        assert_eq!(v.deadline().at, t0 + 3 * S - Duration::from_millis(40));
    }

    #[test]
    fn a_renewal_is_scored_from_its_own_send_time() {
        let t0 = Instant::now();
        let mut v = Validity::granted(m(t0), t0, 3 * S, NO_DRIFT);
        let r = v.begin(m(t0 + S), 3 * S, NO_DRIFT);
        assert_eq!(v.deadline().at, t0 + 3 * S);
        v.confirmed(r, t0 + S + Duration::from_millis(900));
        assert_eq!(v.deadline().at, t0 + 4 * S);
        // The grant was answered before the renewal was sent: settled.
        assert_eq!(v.candidates(), 0);
    }

    #[test]
    fn a_short_renewal_landing_after_a_long_extend_bounds_the_lease() {
        // Renewal (3 s) sent at 1 s, held back; extend (9 s) sent at 1.05 s
        // and confirmed at 1.06 s; the renewal's reply comes at 2 s.
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut v = Validity::granted(m(t0), t0, 3 * S, NO_DRIFT);
        let renewal = v.begin(m(t0 + ms(1000)), 3 * S, NO_DRIFT);
        let extend = v.begin(m(t0 + ms(1050)), 9 * S, NO_DRIFT);
        v.confirmed(extend, t0 + ms(1060));
        // The renewal may land after the extend: 3 s from the extend's send.
        assert_eq!(v.deadline().at, t0 + ms(1050) + 3 * S);
        v.confirmed(renewal, t0 + ms(2000));
        assert_eq!(v.deadline().at, t0 + ms(1050) + 3 * S);
        // A 9 s renewal sent after both answers settles it.
        let next = v.begin(m(t0 + ms(2100)), 9 * S, NO_DRIFT);
        v.confirmed(next, t0 + ms(2110));
        assert_eq!(v.deadline().at, t0 + ms(2100) + 9 * S);
        assert_eq!(v.candidates(), 0);
    }

    #[test]
    fn a_request_of_unknown_outcome_keeps_counting() {
        let t0 = Instant::now();
        let mut v = Validity::granted(m(t0), t0, 3 * S, NO_DRIFT);
        let lost_in_flight = v.begin(m(t0 + S), 3 * S, NO_DRIFT);
        v.unknown(lost_in_flight);
        let extend = v.begin(m(t0 + 2 * S), 9 * S, NO_DRIFT);
        v.confirmed(extend, t0 + 2 * S);
        assert_eq!(v.deadline().at, t0 + 2 * S + 3 * S);
        // Repeated timeouts with the same TTL do not pile up.
        for i in 0..10 {
            let r = v.begin(m(t0 + 3 * S + i * S), 3 * S, NO_DRIFT);
            v.unknown(r);
        }
        assert_eq!(v.candidates(), 1);
    }

    #[test]
    fn a_refused_request_no_longer_counts() {
        let t0 = Instant::now();
        let mut v = Validity::granted(m(t0), t0, 9 * S, NO_DRIFT);
        let r = v.begin(m(t0 + S), 3 * S, NO_DRIFT);
        assert_eq!(v.deadline().at, t0 + 4 * S);
        v.refused(r);
        assert_eq!(v.deadline().at, t0 + 9 * S);
    }

    #[test]
    fn an_older_confirmation_never_moves_the_anchor_back() {
        let t0 = Instant::now();
        let mut v = Validity::granted(m(t0), t0, 3 * S, NO_DRIFT);
        let a = v.begin(m(t0 + S), 3 * S, NO_DRIFT);
        let b = v.begin(m(t0 + 2 * S), 3 * S, NO_DRIFT);
        v.confirmed(b, t0 + 2 * S);
        v.confirmed(a, t0 + 3 * S);
        assert_eq!(v.anchor(), t0 + 2 * S);
        assert_eq!(v.deadline().at, t0 + 5 * S);
    }
}
