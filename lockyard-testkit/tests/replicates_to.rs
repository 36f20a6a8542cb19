//! [`RedisServer::replicates_to`] says yes only once the master streams its
//! writes to the replica: a write made right after is confirmed by `WAIT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::tls::{ServerTls, TlsFiles};

#[test]
fn a_write_right_after_replicates_to_is_confirmed_by_wait() {
    // A master counts a replica for `WAIT` once the replica's first
    // acknowledgement after the snapshot arrives *after* the master reaped
    // the snapshot's child, which it does on its cron tick. With `hz 1` it
    // reaps up to a second late, the replica's first acknowledgement is
    // set aside, and the stream waits for its next (once a second): the
    // window a CI run fell into, made wide. No delay before the snapshot
    // (`repl-diskless-sync-delay 0`) keeps the rounds short. Two spinning
    // threads load the machine as a CI run does: the master's child then
    // exits late as often as not (without them, the old probe passed here
    // on an idle machine and failed in every run on a loaded one).
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let _stop = StopOnDrop(stop, hogs);
    for round in 0..10 {
        let master = RedisServer::start_with(|_, _| {
            ["--hz", "1", "--repl-diskless-sync-delay", "0"]
                .map(String::from)
                .to_vec()
        });
        let port = master.port();
        let replica = RedisServer::start_with(move |_, _| {
            vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()]
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !master.replicates_to(&replica) {
            assert!(Instant::now() < deadline, "round {round}: never in sync");
            std::thread::sleep(Duration::from_millis(20));
        }
        let replies = master.commands(&[&["SET", "written", "now"], &["WAIT", "1", "200"]]);
        assert_eq!(
            replies,
            ["+OK", ":1"],
            "round {round}: replicates_to said yes, yet the replica did not confirm a write"
        );
    }
}

/// Stops the spinning threads however the test ends.
struct StopOnDrop(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for h in self.1.drain(..) {
            let _ = h.join();
        }
    }
}

#[test]
fn commands_run_in_order_on_one_connection_over_tls_too() {
    let files = TlsFiles::generate();
    for server in [
        RedisServer::start(),
        RedisServer::start_tls(&ServerTls::new(&files)),
    ] {
        let tls = server.url().starts_with("rediss://");
        let replies = server.commands(&[
            &["SET", "written", "now"],
            &["GET", "written"],
            // Counts the writes before it on this connection: none is
            // confirmed (no replica), and the answer says so at once.
            &["WAIT", "0", "100"],
        ]);
        let ok = if tls { "OK" } else { "+OK" };
        let zero = if tls { "0" } else { ":0" };
        assert_eq!(replies, [ok, "now", zero], "tls: {tls}");
    }
}
