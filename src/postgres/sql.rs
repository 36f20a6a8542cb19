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
    /// statement (the key's text and the name after the key); it returns
    /// `(granted, token)`.
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
                tries[index(mode, key)] = match table {
                    Some(table) => format!(
                        "WITH g AS (SELECT pg_try_advisory_lock{suffix}({args}) AS ok), \
                         f AS (INSERT INTO {table} AS t (key, name, token) \
                               SELECT ${}, ${}, 1 FROM g WHERE g.ok \
                               ON CONFLICT (key) DO UPDATE SET token = t.token + 1, \
                               name = EXCLUDED.name RETURNING t.token) \
                         SELECT g.ok, (SELECT token FROM f) FROM g",
                        n + 1,
                        n + 2
                    ),
                    None => format!("SELECT pg_try_advisory_lock{suffix}({args}), NULL::int8"),
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
