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
    /// The fence table (quoted), `None` when fencing is off.
    table: Option<String>,
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
        Self {
            tries,
            fence,
            table: table.map(str::to_owned),
        }
    }

    /// The wait for `key` in `mode`, named `name`, by the backend `pid`,
    /// under `lock_timeout = ms`: one simple query (one round trip), the
    /// key inlined (integers only). The lock is taken only on the backend
    /// `pid`; its first row is `(pg_backend_pid(), …)`.
    ///
    /// With fencing, the fence write follows the `COMMIT` in the same query
    /// (its second row is the token): the server skips the rest of a simple
    /// query after an error, so it runs only when the wait was granted, and
    /// only on the backend `pid`. Not for a name holding NUL, which cannot
    /// be written into a query's text: then the second value is `false`,
    /// and the fence is written by its own statement.
    pub(crate) fn wait(
        &self,
        mode: Mode,
        key: PgKey,
        pid: i32,
        ms: u128,
        name: &str,
    ) -> (String, bool) {
        let suffix = if mode == Mode::Shared { "_shared" } else { "" };
        // statement_timeout off: the deadline is lock_timeout's.
        let mut sql = format!(
            "BEGIN; SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = 0; \
             SELECT pg_backend_pid(), CASE WHEN pg_backend_pid() = {pid} \
             THEN pg_advisory_lock{suffix}({}) END; COMMIT",
            key.sql_args()
        );
        let Some(table) = self.table.as_deref().filter(|_| !name.contains('\0')) else {
            return (sql, false);
        };
        sql.push_str(&format!(
            "; INSERT INTO {table} AS t (key, name, token) \
             SELECT '{key}', {}, 1 WHERE pg_backend_pid() = {pid} \
             ON CONFLICT (key) DO UPDATE SET token = t.token + 1, name = EXCLUDED.name \
             RETURNING t.token",
            dollar_quoted(name)
        ));
        (sql, true)
    }

    /// The try for `key` in `mode`.
    pub(crate) fn try_lock(&self, mode: Mode, key: PgKey) -> &str {
        &self.tries[index(mode, key)]
    }
}

/// `text` as a dollar-quoted SQL string: its tag (`$ly$`, `$lyx$`, …) does
/// not occur in it, so nothing in it can end the string (quotes and
/// backslashes are plain characters there, whatever
/// `standard_conforming_strings` says). `text` holds no NUL.
fn dollar_quoted(text: &str) -> String {
    let mut tag = "ly".to_owned();
    while text.contains(&format!("${tag}")) {
        tag.push('x');
    }
    format!("${tag}${text}${tag}$")
}

#[cfg(test)]
mod tests {
    use super::dollar_quoted;

    #[test]
    fn a_dollar_quoted_name_cannot_end_its_string_early() {
        assert_eq!(dollar_quoted("jobs"), "$ly$jobs$ly$");
        assert_eq!(dollar_quoted("a'b\\c"), "$ly$a'b\\c$ly$");
        assert_eq!(dollar_quoted("x$ly$y"), "$lyx$x$ly$y$lyx$");
        assert_eq!(dollar_quoted("$ly$lyx"), "$lyxx$$ly$lyx$lyxx$");
        // A name ending in `$` before the closing tag.
        assert_eq!(dollar_quoted("a$"), "$ly$a$$ly$");
    }
}
