//! A loopback fault proxy for attacking the Redis backend.
//!
//! [`FaultProxy::start`] listens on a free 127.0.0.1 port and forwards every
//! connection to a target port, byte for byte, on a runtime of its own (a
//! separate thread, so a test that stalls its own runtime does not stall the
//! proxy). Faults, all switchable while connections are open:
//!
//! - [`delay_replies`](FaultProxy::delay_replies): every server→client chunk
//!   is delivered this much later (order kept);
//! - [`delay_requests`](FaultProxy::delay_requests): the same client→server;
//! - [`on_request`](FaultProxy::on_request): a [`Rule`] for the next
//!   client→server chunk that contains a byte pattern (for example one
//!   request's RESP-encoded argument): hold that chunk back for a while,
//!   then optionally drop the connection's later requests or hold its
//!   replies for good;
//! - [`drop_requests`](FaultProxy::drop_requests): client→server bytes of
//!   every connection are discarded (a one-way partition);
//! - [`cut`](FaultProxy::cut): every open connection is closed.
//!
//! Every delay is bounded by the caller; nothing here waits without limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What to do with the connection that carried a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing more: later traffic flows (after the held chunk).
    Pass,
    /// The server never sees this connection's later requests.
    DropRequests,
    /// The client never sees this connection's replies from now on
    /// (including the matching request's).
    HoldReplies,
}

/// A one-shot rule for the next client→server chunk containing `pattern`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Bytes to look for (a chunk is whatever one `read` returned).
    pub pattern: Vec<u8>,
    /// How long the matching chunk is held back before it is forwarded.
    pub hold: Duration,
    /// What happens to the connection afterwards.
    pub then: Then,
}

struct Faults {
    epoch: Instant,
    reply_delay: Mutex<Duration>,
    request_delay: Mutex<Duration>,
    rules: Mutex<Vec<Rule>>,
    drop_requests: AtomicBool,
    matched: AtomicU64,
    accepted: AtomicU64,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    port: u16,
    faults: Arc<Faults>,
    cut: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:<target>`.
    pub fn start(target: u16) -> Self {
        let faults = Arc::new(Faults {
            epoch: Instant::now(),
            reply_delay: Mutex::default(),
            request_delay: Mutex::default(),
            rules: Mutex::default(),
            drop_requests: AtomicBool::default(),
            matched: AtomicU64::default(),
            accepted: AtomicU64::default(),
        });
        let (cut, cut_rx) = watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let f = faults.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                let port = listener.local_addr().expect("proxy addr").port();
                port_tx.send(port).expect("report port");
                let target = SocketAddr::from(([127, 0, 0, 1], target));
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        f.accepted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve(client, target, f.clone(), cut_rx.clone()));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy started");
        Self {
            port,
            faults,
            cut,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Delays every server→client chunk by `d` from now on.
    pub fn delay_replies(&self, d: Duration) {
        *self.faults.reply_delay.lock().unwrap() = d;
    }

    /// Delays every client→server chunk by `d` from now on.
    pub fn delay_requests(&self, d: Duration) {
        *self.faults.request_delay.lock().unwrap() = d;
    }

    /// Arms a one-shot rule for the next matching client→server chunk.
    pub fn on_request(&self, rule: Rule) {
        self.faults.rules.lock().unwrap().push(rule);
    }

    /// How many rules have matched so far.
    pub fn matched(&self) -> u64 {
        self.faults.matched.load(Ordering::SeqCst)
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> u64 {
        self.faults.accepted.load(Ordering::SeqCst)
    }

    /// Discards (or stops discarding) all client→server bytes.
    pub fn drop_requests(&self, on: bool) {
        self.faults.drop_requests.store(on, Ordering::SeqCst);
    }

    /// Closes every open connection (new ones are still accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Waits (bounded by `limit`) until `n` rules have matched.
    pub async fn wait_matched(&self, n: u64, limit: Duration) {
        let end = Instant::now() + limit;
        while self.matched() < n {
            assert!(
                Instant::now() < end,
                "fault proxy: rule did not match within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("accepted", &self.accepted())
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per-connection switches set by a matched rule.
#[derive(Default)]
struct ConnFaults {
    drop_requests: AtomicBool,
    hold_replies: AtomicBool,
}

async fn serve(
    client: TcpStream,
    target: SocketAddr,
    f: Arc<Faults>,
    mut cut: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(ConnFaults::default());
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, f.clone(), conn.clone(), true);
    let down = pump(sr, cw, f, conn, false);
    cut.borrow_and_update();
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cut.changed() => {}
    }
}

/// Forwards one direction: a reader task stamps each chunk with its delivery
/// time, the writer delivers in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    f: Arc<Faults>,
    conn: Arc<ConnFaults>,
    upstream: bool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let conn_w = conn.clone();
    // Owns `tx`: when the reader ends, the writer drains and ends too.
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = buf[..n].to_vec();
            let now = Instant::now();
            let at = if upstream {
                if f.drop_requests.load(Ordering::SeqCst)
                    || conn.drop_requests.load(Ordering::SeqCst)
                {
                    continue;
                }
                let mut hold = *f.request_delay.lock().unwrap();
                let mut rules = f.rules.lock().unwrap();
                if let Some(i) = rules.iter().position(|r| contains(&chunk, &r.pattern)) {
                    let rule = rules.remove(i);
                    hold = hold.max(rule.hold);
                    match rule.then {
                        Then::Pass => {}
                        Then::DropRequests => conn.drop_requests.store(true, Ordering::SeqCst),
                        Then::HoldReplies => conn.hold_replies.store(true, Ordering::SeqCst),
                    }
                    f.matched.fetch_add(1, Ordering::SeqCst);
                }
                now + hold
            } else {
                if conn.hold_replies.load(Ordering::SeqCst) {
                    continue;
                }
                let delay = *f.reply_delay.lock().unwrap();
                if delay.is_zero() {
                    now
                } else {
                    // Delayed replies go out on 50 ms ticks, so replies the
                    // server sent moments apart reach the client in one write.
                    let tick = Duration::from_millis(50).as_nanos();
                    let since = (now + delay - f.epoch).as_nanos();
                    let rounded = since.div_ceil(tick) * tick;
                    f.epoch + Duration::from_nanos(rounded as u64)
                }
            };
            if tx.send((at, chunk)).is_err() {
                return;
            }
        }
    };
    let writer = async {
        while let Some((at, mut chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if !upstream && conn_w.hold_replies.load(Ordering::SeqCst) {
                continue;
            }
            // Everything else due by now goes in the same write.
            let mut later = None;
            while let Ok((at, more)) = rx.try_recv() {
                if at > Instant::now() {
                    later = Some((at, more));
                    break;
                }
                chunk.extend_from_slice(&more);
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            let Some((at, chunk)) = later else {
                continue;
            };
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
