//! lockyard in an axum service: what a service built on it looks like.
//!
//! - `POST /tenants/{tenant}/rebuild?ms=N`: a per-tenant **file lock**
//!   (`rebuild-<tenant>`), taken without waiting; a rebuild already running
//!   answers **409** with the holder (pid, host, since).
//! - `GET /expensive?ms=N`: an in-process **semaphore** of `--permits`
//!   permits limits expensive requests; when none is free, **429**.
//! - `POST /deploy?ms=N`: a **Redis** lock `deploy`; the work runs under
//!   `run_until_lost`, so a lock lost meanwhile answers **409 "lost"** (and a
//!   deploy already running 409 "busy").
//! - `GET /metrics`: every lock's counters, gauges and histograms in the
//!   Prometheus text format, through the `metrics` facade (lockyard's
//!   `metrics` feature + `metrics-exporter-prometheus`), no hand-written text.
//! - `GET /locks`: the locks held now (file, Redis) and the statistics.
//! - Graceful shutdown (Ctrl-C, or the future given to [`run`]): in-flight
//!   work is told to stop, every guard is released, and the Redis client
//!   finishes its releases before the process exits.
//!
//! Work "takes" `ms` milliseconds (default 100), or until shutdown begins.
//!
//! ```sh
//! cargo run --example axum_service --features redis,metrics,serde -- \
//!     --redis redis://127.0.0.1:6379/ --listen 127.0.0.1:3000
//! curl -X POST 'localhost:3000/tenants/acme/rebuild?ms=5000' &
//! curl -X POST 'localhost:3000/tenants/acme/rebuild'     # 409, held by ...
//! curl localhost:3000/metrics
//! ```
//!
//! `tests/axum_service.rs` runs it against a private redis-server and drives
//! it with concurrent HTTP clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lockyard::{FileLockManager, LockError, Owner, RedisLocks, RedisOptions, Semaphore, stats};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Redis server of the `deploy` lock.
    pub redis_url: String,
    /// Where the per-tenant file locks live.
    pub lock_dir: PathBuf,
    /// How many expensive requests may run at once.
    pub expensive_permits: usize,
    /// The `deploy` lock's lease (renewed while held).
    pub deploy_ttl: Duration,
}

/// The service's state, shared by every handler.
#[derive(Debug)]
pub struct App {
    files: FileLockManager,
    redis: RedisLocks,
    expensive: Semaphore,
    metrics: PrometheusHandle,
    /// Cancelled when shutdown begins: in-flight work stops early.
    stopping: CancellationToken,
}

/// `?ms=N`: how long the work takes.
#[derive(Debug, Deserialize)]
struct Work {
    ms: Option<u64>,
}

impl Work {
    fn duration(&self) -> Duration {
        Duration::from_millis(self.ms.unwrap_or(100))
    }
}

/// Installs the Prometheus recorder for this process and connects to Redis.
///
/// # Errors
///
/// The recorder cannot be installed (one is already), the lock directory
/// cannot be used, or Redis cannot be reached.
pub async fn app(config: &Config) -> Result<Arc<App>, Box<dyn std::error::Error + Send + Sync>> {
    // Installed before any lock is used, so every event is exported.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    stats::describe_metrics();
    Ok(Arc::new(App {
        files: FileLockManager::new(&config.lock_dir)?,
        redis: RedisLocks::connect_with(
            &config.redis_url,
            RedisOptions::default().ttl(config.deploy_ttl),
        )
        .await?,
        expensive: Semaphore::named("expensive", config.expensive_permits),
        metrics,
        stopping: CancellationToken::new(),
    }))
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/tenants/{tenant}/rebuild", post(rebuild))
        .route("/expensive", get(expensive))
        .route("/deploy", post(deploy))
        .route("/metrics", get(metrics))
        .route("/locks", get(locks))
        .with_state(app)
}

/// Serves `listener` until `shutdown` completes, then stops in-flight work,
/// waits for it, and finishes the Redis releases: nothing stays held.
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn run(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = app.stopping.clone();
    let signal = async move {
        shutdown.await;
        stopping.cancel();
    };
    axum::serve(listener, router(Arc::clone(&app)))
        .with_graceful_shutdown(signal)
        .await?;
    // Every handler has returned, so every guard was dropped; the Redis
    // releases of dropped guards run in the background: wait for them.
    app.redis.shutdown().await;
    Ok(())
}

/// Runs the work: `d`, or less if shutdown begins.
async fn work(app: &App, d: Duration) -> &'static str {
    tokio::select! {
        () = tokio::time::sleep(d) => "done",
        () = app.stopping.cancelled() => "stopped by shutdown",
    }
}

fn holder_json(holder: Option<&Owner>) -> serde_json::Value {
    match holder {
        Some(o) => json!({ "pid": o.pid, "host": o.host, "since": o.since }),
        None => serde_json::Value::Null,
    }
}

fn internal(e: &LockError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn rebuild(
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
    Query(w): Query<Work>,
) -> Response {
    let name = format!("rebuild-{tenant}");
    let guard = match app.files.try_acquire(&name).await {
        Ok(guard) => guard,
        Err(e) if e.is_would_block() => {
            let body = json!({ "error": "busy", "lock": name, "holder": holder_json(e.holder()) });
            return (StatusCode::CONFLICT, Json(body)).into_response();
        }
        Err(e) => return internal(&e),
    };
    let outcome = work(&app, w.duration()).await;
    drop(guard);
    Json(json!({ "rebuilt": tenant, "outcome": outcome })).into_response()
}

async fn expensive(State(app): State<Arc<App>>, Query(w): Query<Work>) -> Response {
    let permit = match app
        .expensive
        .try_acquire()
        .map_err(lockyard::LockError::from)
    {
        Ok(permit) => permit,
        // Every permit taken: saturation, not a held lock.
        Err(e) if e.is_saturated() => {
            let body = json!({ "error": "too many expensive requests" });
            return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        }
        // The semaphore was closed (shutting down).
        Err(e) => {
            let body = json!({ "error": e.to_string() });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    };
    let outcome = work(&app, w.duration()).await;
    drop(permit);
    Json(json!({ "outcome": outcome })).into_response()
}

async fn deploy(State(app): State<Arc<App>>, Query(w): Query<Work>) -> Response {
    let guard = match app.redis.try_acquire("deploy").await {
        Ok(guard) => guard,
        Err(e) if e.is_would_block() => {
            let body = json!({ "error": "busy", "holder": holder_json(e.holder()) });
            return (StatusCode::CONFLICT, Json(body)).into_response();
        }
        Err(e) => return internal(&e),
    };
    let token = guard.fencing_token();
    match guard.run_until_lost(work(&app, w.duration())).await {
        Ok(outcome) => {
            let released = guard.release().await;
            Json(json!({ "deployed": token, "outcome": outcome, "released": released.is_ok() }))
                .into_response()
        }
        Err(e) if e.is_lost() => {
            let body = json!({ "error": "lost", "fencing_token": token });
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        Err(e) => internal(&e),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn locks(State(app): State<Arc<App>>) -> Response {
    let files = match app.files.list().await {
        Ok(list) => list.into_iter().filter(|l| l.held).collect::<Vec<_>>(),
        Err(e) => return internal(&e),
    };
    let redis = match app.redis.list().await {
        Ok(list) => list,
        Err(e) => return internal(&e),
    };
    Json(json!({ "file": files, "redis": redis, "stats": stats::snapshot() })).into_response()
}

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let config = Config {
        redis_url: arg(&args, "--redis").unwrap_or_else(|| "redis://127.0.0.1:6379/".into()),
        lock_dir: arg(&args, "--dir")
            .map(PathBuf::from)
            .unwrap_or_else(FileLockManager::default_dir),
        expensive_permits: arg(&args, "--permits")
            .and_then(|p| p.parse().ok())
            .unwrap_or(4),
        deploy_ttl: Duration::from_secs(30),
    };
    let addr: SocketAddr = arg(&args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    let app = app(&config).await?;
    let listener = TcpListener::bind(addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    run(app, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
