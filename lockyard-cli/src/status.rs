//! `status`: the lock files of a directory, (`--postgres`) the advisory
//! locks of a database, or (`--redis`) the locks held on
//! a Redis server, as a table or JSON. The table escapes control characters
//! (a name with a newline cannot forge a row); JSON has its own escaping.

#[cfg(feature = "redis")]
use lockyard::redis::{RedisLockInfo, RedisLocks};
use lockyard::{FileLockInfo, Mode, Owner, escape_for_display};

use crate::args::StatusArgs;
use crate::exit::CliError;
use crate::lockdir::existing_manager;
use crate::output::{format_table, print};

/// `status`: lock files, or the one `--redis` server's locks.
pub(crate) async fn run(args: &StatusArgs) -> Result<u8, CliError> {
    if let Some(url) = args.postgres.url.as_deref() {
        if !args.redis.urls.is_empty() {
            return Err(CliError::usage(
                "--redis and --postgres are two backends: give one",
            ));
        }
        return postgres(url, args).await;
    }
    match args.redis.urls.as_slice() {
        [] => files(args).await,
        [url] => redis(url, args).await,
        _ => Err(CliError::usage("status --redis takes one server")),
    }
}

async fn files(args: &StatusArgs) -> Result<u8, CliError> {
    let locks = match existing_manager(&args.dir)? {
        Some(manager) => manager.list().await?,
        None => Vec::new(),
    };
    let text = if args.json {
        let rows: Vec<serde_json::Value> = locks.iter().map(json_row).collect();
        serde_json::Value::Array(rows).to_string() + "\n"
    } else {
        table(&locks)
    };
    print(&text)?;
    Ok(0)
}

/// The holder a row names: the recorded owner while the lock is held (the
/// library drops a record the kernel contradicts), never the record of a
/// free lock, which names a past holder (stale).
fn holder(info: &FileLockInfo) -> Option<&Owner> {
    info.owner.as_ref().filter(|_| info.held)
}

/// A record left by a past holder: the lock is free.
fn stale_record(info: &FileLockInfo) -> Option<&Owner> {
    info.owner.as_ref().filter(|_| !info.held)
}

/// `pid`, `host`, `since`: the holder's (null when free or unknown);
/// `holder_pids`: the kernel's holders (Linux); `stale`: the file keeps a
/// past holder's record, shown in `record`.
fn json_row(info: &FileLockInfo) -> serde_json::Value {
    let owner = holder(info);
    let since = |o: &Owner| humantime::format_rfc3339_millis(o.since).to_string();
    let stale = stale_record(info);
    serde_json::json!({
        "name": info.name,
        "held": info.held,
        "mode": info.mode.map(Mode::as_str),
        "pid": owner.map(|o| o.pid),
        "host": owner.map(|o| o.host.as_str()),
        "since": owner.map(since),
        "holder_pids": info.holder_pids,
        "stale": stale.is_some(),
        "record": stale.map(|o| serde_json::json!({
            "pid": o.pid,
            "host": o.host,
            "since": since(o),
        })),
    })
}

fn table(locks: &[FileLockInfo]) -> String {
    let mut rows =
        vec![["NAME", "HELD", "MODE", "PID", "HOST", "SINCE", "NOTE"].map(str::to_owned)];
    let dash = || "-".to_owned();
    for info in locks {
        let owner = holder(info);
        let pid = match owner {
            Some(o) => o.pid.to_string(),
            None if info.held && !info.holder_pids.is_empty() => info
                .holder_pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            None => dash(),
        };
        let note = match (stale_record(info), owner) {
            (Some(o), _) => format!(
                "stale record: pid {} on {} ({})",
                o.pid,
                escape_for_display(&o.host),
                humantime::format_rfc3339_seconds(o.since)
            ),
            (None, None) if info.held => "not a lockyard holder".to_owned(),
            _ => String::new(),
        };
        rows.push([
            escape_for_display(&info.name).into_owned(),
            if info.held { "yes" } else { "no" }.to_owned(),
            info.mode.map_or("-", Mode::as_str).to_owned(),
            pid,
            owner.map_or_else(dash, |o| escape_for_display(&o.host).into_owned()),
            owner.map_or_else(dash, |o| {
                humantime::format_rfc3339_seconds(o.since).to_string()
            }),
            note,
        ]);
    }
    format_table(&rows)
}

#[cfg(feature = "redis")]
async fn redis(url: &str, args: &StatusArgs) -> Result<u8, CliError> {
    let mut opts = lockyard::redis::RedisOptions::new();
    opts.tls = args.tls.settings();
    let locks = RedisLocks::connect_with(url, opts).await?;
    let held = locks.list().await?;
    let text = if args.json {
        let rows: Vec<serde_json::Value> = held.iter().map(redis_json_row).collect();
        serde_json::Value::Array(rows).to_string() + "\n"
    } else {
        let mut rows = vec![
            [
                "NAME", "KIND", "HOLDERS", "TTL", "FENCING", "PID", "HOST", "SINCE",
            ]
            .map(str::to_owned),
        ];
        let dash = || "-".to_owned();
        for info in &held {
            // The longest holder; `--json` lists them all.
            let owner = info.owners.first();
            rows.push([
                escape_for_display(&info.name).into_owned(),
                info.kind.to_owned(),
                info.holders.to_string(),
                info.ttl
                    .map_or_else(dash, |t| format!("{:.1}s", t.as_secs_f64())),
                info.fencing_token.map_or_else(dash, |t| t.to_string()),
                owner.map_or_else(dash, |o| o.pid.to_string()),
                owner.map_or_else(dash, |o| escape_for_display(&o.host).into_owned()),
                owner.map_or_else(dash, |o| {
                    humantime::format_rfc3339_seconds(o.since).to_string()
                }),
            ]);
        }
        format_table(&rows)
    };
    print(&text)?;
    Ok(0)
}

#[cfg(not(feature = "redis"))]
async fn redis(_: &str, _: &StatusArgs) -> Result<u8, CliError> {
    Err(CliError::usage(
        "this lockyard was built without Redis support (feature `redis`)",
    ))
}

/// The same keys as the file listing (`pid`, `host`, `since` of the
/// longest holder, null when unknown) plus `kind`, `holders`, `ttl_ms`,
/// `fencing_token`, and `owners` (every holder lockyard can identify).
#[cfg(feature = "redis")]
fn redis_json_row(info: &RedisLockInfo) -> serde_json::Value {
    let owner = info.owners.first();
    let since = |o: &Owner| humantime::format_rfc3339_millis(o.since).to_string();
    // One name is one lock: its holders are exclusive or shared.
    let mode = match info.kind {
        "lock" => owner.map_or(Some("exclusive"), |o| Some(o.mode.as_str())),
        _ => None,
    };
    let owners: Vec<serde_json::Value> = info
        .owners
        .iter()
        .map(|o| {
            serde_json::json!({
                "pid": o.pid,
                "host": o.host,
                "since": since(o),
                "mode": o.mode.as_str(),
            })
        })
        .collect();
    serde_json::json!({
        "name": info.name,
        "held": info.holders > 0,
        "mode": mode,
        "pid": owner.map(|o| o.pid),
        "host": owner.map(|o| o.host.as_str()),
        "since": owner.map(since),
        "kind": info.kind,
        "holders": info.holders,
        "owners": owners,
        "ttl_ms": info.ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        "fencing_token": info.fencing_token,
    })
}

/// `status --postgres`: every advisory lock granted in the database, with
/// the holder's backend pid and, where lockyard recorded it, the name.
#[cfg(feature = "postgres")]
async fn postgres(url: &str, args: &StatusArgs) -> Result<u8, CliError> {
    let mut opts = lockyard::postgres::PgOptions::default();
    opts.tls = args.tls.settings();
    let locks = lockyard::postgres::PgLocks::connect_with(url, opts).await?;
    let held = locks.list().await?;
    let text = if args.json {
        let rows: Vec<serde_json::Value> = held
            .iter()
            .map(|info| {
                serde_json::json!({
                    "name": info.name,
                    "held": true,
                    "mode": info.mode.as_str(),
                    "pid": info.pid,
                    "key": info.key.to_string(),
                })
            })
            .collect();
        serde_json::Value::Array(rows).to_string() + "\n"
    } else {
        let mut rows = vec![["NAME", "KEY", "MODE", "PID"].map(str::to_owned)];
        for info in &held {
            rows.push([
                info.name
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |n| escape_for_display(n).into_owned()),
                info.key.to_string(),
                info.mode.as_str().to_owned(),
                info.pid.to_string(),
            ]);
        }
        format_table(&rows)
    };
    locks.shutdown().await;
    print(&text)?;
    Ok(0)
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: &str, _: &StatusArgs) -> Result<u8, CliError> {
    Err(CliError::usage(
        "this lockyard was built without Postgres support (feature `postgres`)",
    ))
}
