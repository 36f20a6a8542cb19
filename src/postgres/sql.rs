//! The statements a client sends on every acquisition, built once per
//! client (they depend on its fence table only) and prepared once per
//! connection.

use super::keys::PgKey;
use crate::options::Mode;

/// One client's acquisition statements.
#[derive(Debug)]
pub(crate) struct Statements {
    /// The try, by [`index`]: `pg_try_advisory_lock[_shared]` with the key
    /// as `$1` (or `$1, $2`), and with fencing the fence write in the same
    /// statement (the key's text and the name after the key); the session's
    /// backend pid is the last parameter. It returns `(granted, token,
    /// pid)`: the lock is tried only on the session's own backend (`CASE`
    /// evaluates only the branch it takes), else `granted` is NULL and
    /// `pid` names the backend that ran it (see [`Session::pid`]).
    ///
    /// [`Session::pid`]: super::session::Session::pid
    tries: [String; 4],
    /// The fence write after a wait: `$1` the key's text, `$2` the name.
    pub(crate) fence: String,
}

/// Which of the four tries: shared or not, pair key or not.
fn index(mode: Mode, key: PgKey) -> usize {
    usize::from(mode == Mode::Shared) * 2 + usize::from(matches!(key, PgKey::Pair(..)))
}

impl Statements {
    /// The statements for the fence table `table` (quoted), `None` when
    /// fencing is off.
    pub(crate) fn new(table: Option<&str>) -> Self {
        let mut tries: [String; 4] = Default::default();
        for mode in [Mode::Exclusive, Mode::Shared] {
            for key in [PgKey::Single(0), PgKey::Pair(0, 0)] {
                let suffix = if mode == Mode::Shared { "_shared" } else { "" };
                let (args, n) = match key {
                    PgKey::Single(_) => ("$1", 1),
                    PgKey::Pair(..) => ("$1, $2", 2),
                };
                let pid = if table.is_some() { n + 3 } else { n + 1 };
                let try_here = format!(
                    "CASE WHEN pg_backend_pid() = ${pid} \
                     THEN pg_try_advisory_lock{suffix}({args}) END"
                );
                tries[index(mode, key)] = match table {
                    Some(table) => format!(
                        "WITH g AS (SELECT {try_here} AS ok), \
                         f AS (INSERT INTO {table} AS t (key, name, token) \
                               SELECT ${}, ${}, 1 FROM g WHERE g.ok \
                               ON CONFLICT (key) DO UPDATE SET token = t.token + 1, \
                               name = EXCLUDED.name RETURNING t.token) \
                         SELECT g.ok, (SELECT token FROM f), pg_backend_pid() FROM g",
                        n + 1,
                        n + 2
                    ),
                    None => format!("SELECT {try_here}, NULL::int8, pg_backend_pid()"),
                };
            }
        }
        let fence = match table {
            Some(table) => format!(
                "INSERT INTO {table} AS t (key, name, token) VALUES ($1, $2, 1) \
                 ON CONFLICT (key) DO UPDATE SET token = t.token + 1, name = EXCLUDED.name \
                 RETURNING t.token"
            ),
            None => String::new(),
        };
        Self { tries, fence }
    }

    /// The try for `key` in `mode`.
    pub(crate) fn try_lock(&self, mode: Mode, key: PgKey) -> &str {
        &self.tries[index(mode, key)]
    }
}
