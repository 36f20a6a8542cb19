//! A model of one lease's lost / extend / renewal ordering, checked with
//! a clock the test moves: the watchdog's and an extend's steps on the real
//! [`Validity`] and [`LeaseDeadline`], a server that applies each request
//! when it arrives, and a holder that asks "still held?". The property is
//! the one a lock promises (invariant 3): whenever the holder is told
//! *held*, the server's lease has not ended; and once told *lost*, it stays
//! lost.
//!
//! The plain test replays the schedule that a suspend of the machine during
//! a renewal's round trip makes; the loom model
//! (`RUSTFLAGS="--cfg lockyard_loom" cargo test --profile loom --lib -- loom`)
//! tries every interleaving of a renewal, an extend, the clocks (time
//! passing, a suspend) and the holder's checks.

use std::time::Duration;

use super::validity::{RequestId, Validity};
use crate::loom::sync::Mutex;
use crate::loom::sync::atomic::{AtomicBool, Ordering};
use crate::lost::model_clock::{self, Installed};
use crate::lost::{LeaseDeadline, Moment};

/// The server's side: the lease's key expires at `end` ms of real time
/// (the boot clock: a server's TTL runs while the client's machine sleeps).
struct Server {
    end: u64,
}

pub(super) struct Model {
    pub(super) clock: Installed,
    server: Mutex<Server>,
    /// The watchdog's entry: what the client knows.
    validity: Mutex<Validity>,
    deadline: LeaseDeadline,
    /// The lost token: the server said the lease is gone, or a confirmation
    /// came after the deadline.
    lost: AtomicBool,
}

/// A request begun on the lease.
pub(super) struct Request {
    id: RequestId,
    ttl: u64,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Model {
    /// A lease granted at 0 ms for `ttl` ms (the grant applied at once).
    pub(super) fn granted(ttl: u64) -> Self {
        let clock = model_clock::install();
        let sent = Moment::now();
        let validity = Validity::granted(sent, sent.at, ms(ttl), Duration::ZERO);
        let deadline = LeaseDeadline::ending(validity.deadline());
        Self {
            clock,
            server: Mutex::new(Server { end: ttl }),
            validity: Mutex::new(validity),
            deadline,
            lost: AtomicBool::new(false),
        }
    }

    /// A renewal or extend carrying `ttl` is sent: it counts from now, and
    /// the deadline is published (the watchdog's `begin` + `publish`).
    pub(super) fn begin(&self, ttl: u64) -> Request {
        let mut v = self.validity.lock();
        let id = v.begin(Moment::now(), ms(ttl), Duration::ZERO);
        self.deadline.set_end(v.deadline());
        Request { id, ttl }
    }

    /// The request reaches the server: applied if the key is still there.
    pub(super) fn apply(&self, r: &Request) -> bool {
        let mut s = self.server.lock();
        let real = self.clock.real_ms();
        if real < s.end {
            s.end = real + r.ttl;
            true
        } else {
            false
        }
    }

    /// Its reply reaches the client (the watchdog's or extend's handling).
    pub(super) fn reply(&self, r: Request, applied: bool) {
        let mut v = self.validity.lock();
        if !applied {
            // "Gone or held by another owner".
            self.lost.store(true, Ordering::SeqCst);
            return;
        }
        v.confirmed(r.id, Moment::now().at);
        if !self.deadline.set_end(v.deadline()) || self.deadline.has_passed() {
            // Confirmed after the lease's validity (invariant 1).
            self.lost.store(true, Ordering::SeqCst);
        }
    }

    /// A whole renewal or extend: sent, applied, answered.
    pub(super) fn request(&self, ttl: u64) {
        let r = self.begin(ttl);
        let applied = self.apply(&r);
        self.reply(r, applied);
    }

    /// The holder asks whether it still holds the lease, as `is_lost` does;
    /// asserts that *held* is true on the server at that moment. Returns
    /// whether it was told lost.
    pub(super) fn check(&self) -> bool {
        let s = self.server.lock();
        let lost = self.lost.load(Ordering::SeqCst) || self.deadline.has_passed();
        let real = self.clock.real_ms();
        assert!(
            lost || real < s.end,
            "told held at {real} ms of real time, but the server's lease ended at {} ms",
            s.end
        );
        lost
    }

    /// Time passes on both clocks (atomically with the holder's checks).
    pub(super) fn advance(&self, n: u64) {
        let _s = self.server.lock();
        self.clock.advance(n);
    }

    /// The machine sleeps `n` ms: only real time (the boot clock) moves.
    pub(super) fn suspend(&self, n: u64) {
        let _s = self.server.lock();
        self.clock.suspend(n);
    }
}

#[cfg(not(lockyard_loom))]
mod tests {
    use super::Model;

    /// A suspend between a renewal's send and its reply: the renewal was
    /// applied before the machine slept, so the server's lease ends 4 ms
    /// after its send, in real time. Placing the confirmed deadline on the
    /// boot clock as of the reply (it was, before `Moment`) put it 3 ms (the
    /// suspend) too late, and the holder was told held after the server had
    /// let the lease go.
    #[test]
    fn a_suspend_during_a_renewal_does_not_lengthen_the_lease() {
        let m = Model::granted(4);
        let r = m.begin(4);
        let applied = m.apply(&r);
        assert!(applied);
        m.suspend(3);
        m.reply(r, applied);
        assert!(!m.check(), "3 ms of real time into a 4 ms lease");
        m.advance(1);
        assert!(m.check(), "the server's lease ended at 4 ms");
    }

    /// A renewal that reaches the server after its lease ended finds the
    /// key gone: lost, and lost it stays.
    #[test]
    fn a_renewal_after_the_end_is_lost() {
        let m = Model::granted(2);
        m.advance(1);
        m.suspend(1);
        assert!(m.check(), "the boot clock is past the grant's 2 ms");
        m.request(4);
        assert!(m.check());
    }

    /// A short extend applied after a long renewal bounds the lease.
    #[test]
    fn a_short_extend_landing_last_bounds_the_lease() {
        let m = Model::granted(4);
        let renewal = m.begin(8);
        let extend = m.begin(2);
        let applied = m.apply(&renewal);
        m.reply(renewal, applied);
        let applied = m.apply(&extend);
        m.reply(extend, applied);
        m.advance(1);
        assert!(!m.check());
        m.advance(1);
        assert!(m.check(), "the extend's 2 ms, applied last, ended it");
    }
}

#[cfg(lockyard_loom)]
mod loom_models {
    use std::sync::Arc;

    use super::Model;

    /// A renewal (4 ms) and a shorter extend (2 ms) race each other and the
    /// clocks (1 ms passing, a 2 ms suspend, 1 ms passing) while the holder
    /// checks twice: held is never said of a lease the server has let go,
    /// and lost, once said, is said again.
    #[test]
    fn loom_lease_lost_extend_renewal_ordering() {
        loom::model(|| {
            let m = Arc::new(Model::granted(4));
            // The watchdog's renewal, and a shorter extend from the guard.
            let [renewer, extender] = [4, 2].map(|ttl| {
                let m = m.clone();
                loom::thread::spawn(move || m.request(ttl))
            });
            let clock = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    m.advance(1);
                    m.suspend(2);
                    m.advance(1);
                })
            };
            let first = m.check();
            let second = m.check();
            assert!(!first || second, "lost, then held again");
            renewer.join().unwrap();
            extender.join().unwrap();
            clock.join().unwrap();
            let last = m.check();
            assert!(!second || last, "lost, then held again");
            drop(m);
        });
    }
}
