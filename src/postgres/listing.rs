//! Looking at every advisory lock of the database: [`PgLockInfo`].

use std::collections::HashMap;

use tokio_postgres::types::Type;

use super::context::PgLocks;
use super::errors::{map_pg, timed_out};
use super::keys::PgKey;
use crate::error::LockError;
use crate::options::Mode;

/// One granted advisory lock, as [`PgLocks::list`] shows it.
///
/// ```no_run
/// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
/// for info in locks.list().await? {
///     println!("{} {:?} held by backend {}", info.name.as_deref().unwrap_or("?"), info.mode, info.pid);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgLockInfo {
    /// The key.
    pub key: PgKey,
    /// The name last recorded for the key in the fence table, if fencing
    /// is on and a lockyard client took it (other clients record none).
    pub name: Option<String>,
    /// Exclusive or shared.
    pub mode: Mode,
    /// The holding backend's pid (`pg_stat_activity.pid`).
    pub pid: i32,
}

/// Every advisory lock granted in the client's database, with names from
/// the fence table when it is in use; sorted by key, then pid.
pub(crate) async fn list(client: &PgLocks) -> Result<Vec<PgLockInfo>, LockError> {
    const OP: &str = "list the advisory locks";
    let session = client.session("").await?;
    let limit = client.options().op_timeout;
    let look = async {
        let rows = session
            .client
            .query_typed(
                "SELECT classid::int8, objid::int8, objsubid, mode, pid FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND pid IS NOT NULL \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (classid, objid, objsubid): (i64, i64, i16) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let mode: String = row.try_get(3)?;
            let pid: i32 = row.try_get(4)?;
            let Some(key) = PgKey::from_pg_locks(classid, objid, objsubid) else {
                continue;
            };
            let mode = if mode == "ShareLock" {
                Mode::Shared
            } else {
                Mode::Exclusive
            };
            out.push(PgLockInfo {
                key,
                name: None,
                mode,
                pid,
            });
        }
        if client.options().fencing && !out.is_empty() {
            let table = client.options().fence_table();
            let exists: bool = session
                .client
                .query_typed_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[(&table, Type::TEXT)],
                )
                .await?
                .try_get(0)?;
            if exists {
                let keys: Vec<String> = out.iter().map(|i| i.key.to_string()).collect();
                let names: HashMap<String, String> = session
                    .client
                    .query_typed(
                        &format!("SELECT key, name FROM {table} WHERE key = ANY($1)"),
                        &[(&keys, Type::TEXT_ARRAY)],
                    )
                    .await?
                    .into_iter()
                    .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
                    .collect();
                for info in &mut out {
                    info.name = names.get(&info.key.to_string()).cloned();
                }
            }
        }
        out.sort_by_key(|i| (i.key, i.pid));
        Ok::<_, tokio_postgres::Error>(out)
    };
    let result = match tokio::time::timeout(limit, look).await {
        Ok(Ok(list)) => Ok(list),
        Ok(Err(e)) => Err(map_pg("", OP, e)),
        Err(_) => return Err(timed_out("", OP, limit)),
    };
    client.put_back(session);
    result
}
