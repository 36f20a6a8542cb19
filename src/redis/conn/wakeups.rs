//! Release wakeups over one shared pub/sub connection per client.
//!
//! A waiter [`subscribe`](Wakeups::subscribe)s to a resource's release
//! channel *before* it retries the acquire script, so a release published
//! after that retry cannot be missed; it then waits for
//! [`Subscription::changed`] (or the holder's remaining TTL, or its deadline).
//!
//! One background task owns the pub/sub connection. Channels are subscribed
//! on demand and reference-counted: the first waiter of a channel subscribes
//! it, the last one to leave unsubscribes it. Each channel has a
//! `watch::Sender<u64>` counting the messages seen, so a waiter that marked
//! the current count as seen wakes on any later message, however many other
//! waiters share the channel.
//!
//! When the connection drops the task reconnects with backoff and
//! resubscribes every live channel; meanwhile (and whenever a subscription is
//! not confirmed within the client's `op_timeout`) subscriptions report
//! [`is_reliable`](Subscription::is_reliable) `false` and waiters fall back to
//! backoff polling bounded by the holder's TTL. Every channel is also bumped
//! on disconnect and on reconnect, since messages may have been lost.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::redis::conn::sentinel::Target;
use crate::redis::conn::tls::TlsMaterial;

/// The subscription state of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// `SUBSCRIBE` sent, not yet confirmed.
    Pending,
    /// Confirmed: a `PUBLISH` from now on reaches us.
    Active,
    /// The pub/sub connection is down.
    Down,
}

struct Channel {
    /// Count of messages (and disconnects) seen on the channel.
    messages: watch::Sender<u64>,
    state: watch::Sender<SubState>,
    refs: usize,
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

struct Shared {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks every channel with `state` and wakes all its waiters.
    fn set_all(&self, state: SubState) {
        for ch in self.lock().values() {
            ch.state.send_replace(state);
            ch.messages.send_modify(|n| *n += 1);
        }
    }

    fn set(&self, name: &str, state: SubState) {
        if let Some(ch) = self.lock().get(name) {
            ch.state.send_replace(state);
        }
    }
}

/// Where release messages come from.
// One per client, moved once into its wakeup task: the variants' sizes do
// not matter (`redis::Client`'s size depends on the features: clippy flags
// it with `--features redis` alone, as the kit builds lockyard).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Source {
    /// One server (or the primary the sentinels name): classic `SUBSCRIBE`
    /// on one pub/sub connection (the release scripts `PUBLISH`). After a
    /// Sentinel failover it reconnects, to the new primary.
    Node(Target),
    /// A Cluster, from these seeds: sharded `SSUBSCRIBE` (the release
    /// scripts `SPUBLISH`), so a message stays on its slot's shard instead
    /// of being broadcast to every node.
    Cluster(Vec<redis::ConnectionInfo>, TlsMaterial),
}

/// The client's wakeup service. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Wakeups {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    op_timeout: Duration,
}

impl fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wakeups")
            .field("channels", &self.shared.lock().len())
            .finish_non_exhaustive()
    }
}

impl Wakeups {
    /// Starts the pub/sub task; it connects lazily (on the first
    /// subscription) and stops when `shutdown` is cancelled.
    pub(crate) fn start(
        source: Source,
        op_timeout: Duration,
        connect_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        match source {
            Source::Node(client) => {
                tokio::spawn(run(client, shared.clone(), rx, op_timeout, shutdown));
            }
            Source::Cluster(seeds, tls) => {
                tokio::spawn(run_sharded(
                    seeds,
                    tls,
                    shared.clone(),
                    rx,
                    op_timeout,
                    connect_timeout,
                    shutdown,
                ));
            }
        }
        Self {
            shared,
            commands: tx,
            op_timeout,
        }
    }

    /// Subscribes to `channel` and waits (at most the client's `op_timeout`)
    /// until Redis confirms, so that every later `PUBLISH` is seen.
    ///
    /// Never fails: if pub/sub is unavailable the subscription says so
    /// through [`Subscription::is_reliable`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops the subscription (the channel
    /// is unsubscribed when nobody else uses it).
    pub(crate) async fn subscribe(&self, channel: &str) -> Subscription {
        let (messages, mut state, new) = {
            let mut map = self.shared.lock();
            match map.get_mut(channel) {
                Some(ch) => {
                    ch.refs += 1;
                    (ch.messages.subscribe(), ch.state.subscribe(), false)
                }
                None => {
                    let (messages, rx) = watch::channel(0);
                    let (state, state_rx) = watch::channel(SubState::Pending);
                    map.insert(
                        channel.to_owned(),
                        Channel {
                            messages,
                            state,
                            refs: 1,
                        },
                    );
                    (rx, state_rx, true)
                }
            }
        };
        let sub = Subscription {
            wakeups: self.clone(),
            channel: channel.to_owned(),
            messages,
            state: state.clone(),
        };
        if new
            && self
                .commands
                .send(Command::Subscribe(channel.to_owned()))
                .is_err()
        {
            // The task is gone (client shutting down): unreliable.
            self.shared.set(channel, SubState::Down);
        }
        let _ = tokio::time::timeout(self.op_timeout, state.wait_for(|s| *s != SubState::Pending))
            .await;
        sub
    }
}

/// One waiter's interest in one channel. Dropping it unsubscribes the
/// channel when it was the last.
pub(crate) struct Subscription {
    wakeups: Wakeups,
    channel: String,
    messages: watch::Receiver<u64>,
    state: watch::Receiver<SubState>,
}

impl Subscription {
    /// Whether a `PUBLISH` on the channel is known to reach us now. When
    /// `false`, waiters must poll (with backoff bounded by the holder's TTL).
    pub(crate) fn is_reliable(&self) -> bool {
        *self.state.borrow() == SubState::Active
    }

    /// Marks every message so far as seen; [`changed`](Self::changed) then
    /// waits for a later one. Call it before each retry of the acquire
    /// script.
    pub(crate) fn mark_seen(&mut self) {
        self.messages.borrow_and_update();
    }

    /// Completes on the first message after the last
    /// [`mark_seen`](Self::mark_seen) (or at once if one already came), and
    /// when the pub/sub connection drops or comes back.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message that arrives while nobody waits is kept until
    /// the next call or `mark_seen`.
    pub(crate) async fn changed(&mut self) {
        if self.messages.changed().await.is_err() {
            // The channel entry is gone (client shut down): never again.
            std::future::pending::<()>().await;
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("reliable", &self.is_reliable())
            .finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.wakeups.shared.lock();
        let last = match map.get_mut(&self.channel) {
            Some(ch) => {
                ch.refs -= 1;
                ch.refs == 0
            }
            None => false,
        };
        if last {
            map.remove(&self.channel);
            drop(map);
            let _ = self
                .wakeups
                .commands
                .send(Command::Unsubscribe(std::mem::take(&mut self.channel)));
        }
    }
}

/// Returns when the sentinels report a failover; never without sentinels.
async fn failed_over(switches: Option<&mut watch::Receiver<u64>>) {
    if let Some(s) = switches
        && s.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// How often an idle pub/sub connection is checked with `PING`.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Ticks every [`HEALTH_EVERY`], the first one period from now.
fn health_checks() -> tokio::time::Interval {
    let mut health =
        tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_EVERY, HEALTH_EVERY);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health
}

/// The pub/sub task: connect, subscribe what is wanted, dispatch messages,
/// reconnect on loss.
async fn run(
    target: Target,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    op_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut switches = target.sentinels().map(|s| s.switches());
    loop {
        if !until_wanted(&shared, &mut commands, &shutdown).await {
            return;
        }
        if let Some(s) = switches.as_mut() {
            s.borrow_and_update();
        }
        let connect = async { target.client().await?.get_async_pubsub().await };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tokio::time::timeout(op_timeout, connect) => r,
        };
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "pub/sub connection failed; waiters poll until it is back");
                if !down_for(&shutdown, &mut commands, &shared, &mut backoff).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::debug!("pub/sub connection timed out; waiters poll until it is back");
                if !down_for(&shutdown, &mut commands, &shared, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // Subscribe everything wanted now, in one command.
        let wanted: Vec<String> = shared.lock().keys().cloned().collect();
        if !wanted.is_empty() {
            match tokio::time::timeout(op_timeout, sink.subscribe(&wanted)).await {
                Ok(Ok(())) => {
                    backoff = Duration::from_millis(50);
                    // Messages may have been missed while down: wake all.
                    shared.set_all(SubState::Active);
                }
                _ => {
                    shared.set_all(SubState::Down);
                    if !sleep_draining(&shutdown, &mut commands, &shared, backoff).await {
                        return;
                    }
                    continue;
                }
            }
        }
        // Serve until the connection drops, or stops answering: a
        // half-open connection (a peer gone without a FIN, a silent proxy)
        // delivers no message and reports no error, so PING it.
        let mut health = health_checks();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                // A Sentinel failover: the releases are published on the
                // new primary now.
                () = failed_over(switches.as_mut()) => break,
                _ = health.tick() => {
                    let pong = tokio::time::timeout(op_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::debug!("pub/sub connection did not answer PING; reconnecting");
                        break;
                    }
                }
                cmd = commands.recv() => {
                    let ok = match cmd {
                        None => return,
                        Some(Command::Subscribe(ch)) => {
                            match tokio::time::timeout(op_timeout, sink.subscribe(&ch)).await {
                                Ok(Ok(())) => {
                                    shared.set(&ch, SubState::Active);
                                    true
                                }
                                _ => false,
                            }
                        }
                        Some(Command::Unsubscribe(ch)) => {
                            // A waiter may have re-subscribed it meanwhile.
                            if shared.lock().contains_key(&ch) {
                                true
                            } else {
                                matches!(
                                    tokio::time::timeout(op_timeout, sink.unsubscribe(&ch)).await,
                                    Ok(Ok(()))
                                )
                            }
                        }
                    };
                    if !ok {
                        break;
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => {
                        if let Some(ch) = shared.lock().get(msg.get_channel_name()) {
                            ch.messages.send_modify(|n| *n += 1);
                        }
                    }
                    None => break,
                },
            }
        }
        tracing::debug!("pub/sub connection lost; reconnecting");
        shared.set_all(SubState::Down);
    }
}

/// The sharded pub/sub task of a Cluster client: one RESP3 cluster
/// connection whose pushes carry the messages. The redis crate routes each
/// `SSUBSCRIBE` to the channel's shard and subscribes again after a
/// reconnect, a failover or a slot migration; we mark every channel down
/// (and wake its waiters, who then poll) whenever a node connection drops,
/// and up again when its subscription is confirmed. Every node is PINGed
/// each [`HEALTH_EVERY`]; one that does not answer in time (half-open, or
/// down) starts the whole connection again, so while a master is down its
/// waiters and the others' poll (each woken once per attempt) until the
/// cluster has failed it over.
async fn run_sharded(
    seeds: Vec<redis::ConnectionInfo>,
    tls: TlsMaterial,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    op_timeout: Duration,
    connect_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if !until_wanted(&shared, &mut commands, &shutdown).await {
            return;
        }
        let (push_tx, mut pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
        let client =
            crate::redis::conn::cluster::client_builder(&seeds, &tls, op_timeout, connect_timeout)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push_tx)
                .build();
        let connected = match client {
            Ok(client) => tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(connect_timeout, client.get_async_connection()) => match r {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "sharded pub/sub connection failed; waiters poll until it is back");
                        None
                    }
                    Err(_) => None,
                },
            },
            Err(e) => {
                tracing::debug!(error = %e, "sharded pub/sub client could not be built");
                None
            }
        };
        let Some(mut conn) = connected else {
            if !down_for(&shutdown, &mut commands, &shared, &mut backoff).await {
                return;
            }
            continue;
        };
        backoff = Duration::from_millis(50);
        // Subscribe everything wanted now (each channel on its shard).
        let wanted: Vec<String> = shared.lock().keys().cloned().collect();
        for ch in wanted {
            match tokio::time::timeout(op_timeout, conn.ssubscribe(&ch)).await {
                Ok(Ok(())) => {
                    shared.set(&ch, SubState::Active);
                    bump(&shared, &ch);
                }
                _ => shared.set(&ch, SubState::Down),
            }
        }
        // After a node connection dropped: when to subscribe every channel
        // still down again (the crate resubscribes what it tracked, but a
        // channel whose SSUBSCRIBE failed meanwhile is ours to retry).
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut retry_backoff = Duration::from_millis(100);
        // A half-open node connection delivers no push and reports no
        // error, as on one server: PING every node (the crate sends PING to
        // all of them) and start again when one does not answer.
        let mut health = health_checks();
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = health.tick() => {
                    let pong = tokio::time::timeout(
                        op_timeout,
                        redis::cmd("PING").query_async::<redis::Value>(&mut conn),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::debug!("a node of the sharded pub/sub connection did not answer PING; reconnecting");
                        break;
                    }
                }
                () = retry => {
                    retry_at = None;
                    let down: Vec<String> = shared
                        .lock()
                        .iter()
                        .filter(|(_, c)| *c.state.borrow() != SubState::Active)
                        .map(|(name, _)| name.clone())
                        .collect();
                    for ch in down {
                        if matches!(tokio::time::timeout(op_timeout, conn.ssubscribe(&ch)).await, Ok(Ok(()))) {
                            shared.set(&ch, SubState::Active);
                            bump(&shared, &ch);
                        } else {
                            retry_at = Some(tokio::time::Instant::now() + retry_backoff);
                        }
                    }
                    retry_backoff = if retry_at.is_some() {
                        (retry_backoff * 2).min(Duration::from_secs(2))
                    } else {
                        Duration::from_millis(100)
                    };
                }
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::Subscribe(ch)) => {
                        let state = match tokio::time::timeout(op_timeout, conn.ssubscribe(&ch)).await {
                            Ok(Ok(())) => SubState::Active,
                            Ok(Err(e)) => {
                                tracing::debug!(channel = ch, error = %e, "SSUBSCRIBE failed; its waiters poll");
                                SubState::Down
                            }
                            Err(_) => SubState::Down,
                        };
                        shared.set(&ch, state);
                    }
                    Some(Command::Unsubscribe(ch)) => {
                        if !shared.lock().contains_key(&ch) {
                            let _ = tokio::time::timeout(op_timeout, conn.sunsubscribe(&ch)).await;
                        }
                    }
                },
                push = pushes.recv() => {
                    let Some(push) = push else { break };
                    if on_push(&shared, push) && retry_at.is_none() {
                        retry_at = Some(tokio::time::Instant::now() + retry_backoff);
                    }
                }
            }
        }
        tracing::debug!("sharded pub/sub connection lost; reconnecting");
        shared.set_all(SubState::Down);
    }
}

/// Counts a message (or a possible loss of messages) on `channel`.
fn bump(shared: &Shared, channel: &str) {
    if let Some(ch) = shared.lock().get(channel) {
        ch.messages.send_modify(|n| *n += 1);
    }
}

/// One RESP3 push of the sharded pub/sub connection. Returns whether
/// subscriptions were lost (channels to subscribe again).
fn on_push(shared: &Shared, push: redis::PushInfo) -> bool {
    let channel = |data: &[redis::Value]| match data.first() {
        Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(redis::Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    };
    match push.kind {
        redis::PushKind::SMessage | redis::PushKind::Message => {
            if let Some(ch) = channel(&push.data) {
                bump(shared, &ch);
            }
        }
        redis::PushKind::SSubscribe => {
            // A (re)subscription confirmed: messages may have been missed
            // before it, so wake its waiters too.
            if let Some(ch) = channel(&push.data) {
                shared.set(&ch, SubState::Active);
                bump(shared, &ch);
            }
        }
        redis::PushKind::SUnsubscribe => {
            // The server dropped it (its slot moved): down until the crate
            // subscribes it again on the new owner.
            if let Some(ch) = channel(&push.data)
                && shared.lock().contains_key(&ch)
            {
                shared.set(&ch, SubState::Down);
                bump(shared, &ch);
                return true;
            }
        }
        redis::PushKind::Disconnection => {
            // One node's connection dropped: its channels may miss
            // messages until resubscribed; we cannot tell which they are.
            shared.set_all(SubState::Down);
            return true;
        }
        _ => {}
    }
    false
}

/// Returns once a channel is wanted (connect only when someone waits);
/// `false` on shutdown.
async fn until_wanted(
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    shutdown: &CancellationToken,
) -> bool {
    while shared.lock().is_empty() {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            cmd = commands.recv() => match cmd {
                None => return false,
                // Unsubscribe of a removed channel: nothing to do.
                Some(Command::Unsubscribe(_)) => {}
                Some(Command::Subscribe(_)) => return true,
            },
        }
    }
    true
}

/// After a failed connect: marks every channel down, waits `backoff`
/// (answering subscriptions with "down"), and doubles it (at most 2 s).
/// Returns `false` on shutdown.
async fn down_for(
    shutdown: &CancellationToken,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    shared: &Shared,
    backoff: &mut Duration,
) -> bool {
    shared.set_all(SubState::Down);
    let go_on = sleep_draining(shutdown, commands, shared, *backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    go_on
}

/// Sleeps `delay` while answering subscriptions with "down". Returns `false`
/// on shutdown.
async fn sleep_draining(
    shutdown: &CancellationToken,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    shared: &Shared,
    delay: Duration,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = &mut sleep => return true,
            cmd = commands.recv() => match cmd {
                None => return false,
                Some(Command::Subscribe(ch)) => shared.set(&ch, SubState::Down),
                Some(Command::Unsubscribe(_)) => {}
            },
        }
    }
}
