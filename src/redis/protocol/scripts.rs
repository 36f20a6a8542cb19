//! Every Lua script of the Redis backend, each built once, and the list
//! the client preloads at connect time.
//!
//! [`redis::Script`] hashes its body once; `invoke_async` sends `EVALSHA` and
//! falls back to `SCRIPT LOAD` + `EVALSHA` on `NOSCRIPT` (after a server
//! restart or `SCRIPT FLUSH`). Pipelines do not get that fallback, so the
//! watchdog reloads by itself when a pipelined `EVALSHA` answers `NOSCRIPT`.
//!
//! The key layout each script expects is built in [`crate::redis::protocol::keys`].
//!
//! # Scripts a migrating Cluster slot can serve
//!
//! While a slot migrates, its source runs a script only if every key the
//! script names is there (`TRYAGAIN` when some are, `ASK` to the target when
//! none is), the target (after `ASKING`) only if every key is there or the
//! script names one; and a command inside a script on a key the node does
//! not have, or no longer has, fails the script half-way. So the scripts a
//! held lock needs during a migration (release, renewal, extend) name only
//! keys that exist while it is held (a channel is an argument, never a key)
//! and touch no key after deleting it. The acquire scripts name every key of
//! the name and are refused until the slot has settled.

use std::sync::LazyLock;

use redis::Script;

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $(
            $(#[$doc])*
            pub(crate) static $name: LazyLock<Script> =
                LazyLock::new(|| Script::new(include_str!(concat!("scripts/", $file))));
        )*

        /// The source of every script (both forms of those that publish):
        /// what the ACL check reads the commands lockyard runs from.
        pub(crate) fn sources() -> Vec<String> {
            let mut all = vec![$(include_str!(concat!("scripts/", $file)).to_owned()),*];
            for source in PUBLISHING_SOURCES {
                all.push((*source).to_owned());
                all.push(sharded_source(source));
            }
            all
        }

        /// Every script (both forms of those that publish), for loading at
        /// connect time.
        pub(crate) fn all() -> Vec<&'static Script> {
            let mut all = vec![$(&*$name),*];
            for p in PUBLISHING {
                all.push(p.get(false));
                all.push(p.get(true));
            }
            all
        }
    };
}

/// A script that wakes waiters, in its two forms: `PUBLISH` (one server)
/// and `SPUBLISH` (a Cluster: the message stays on the slot's shard; the
/// channel carries the resource's hash tag, so it is on the script's slot).
/// The sharded form is the same file with every `redis.call('PUBLISH'`
/// turned into `redis.call('SPUBLISH'`, so the two cannot drift apart.
pub(crate) struct Publishing {
    classic: LazyLock<Script>,
    sharded: LazyLock<Script>,
}

impl Publishing {
    /// The form for a client on a Cluster (`sharded`) or one server.
    pub(crate) fn get(&'static self, sharded: bool) -> &'static Script {
        if sharded {
            &self.sharded
        } else {
            &self.classic
        }
    }
}

/// `source` with its publishes sharded.
fn sharded(source: &str) -> Script {
    Script::new(&sharded_source(source))
}

fn sharded_source(source: &str) -> String {
    source.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
}

/// The commands the scripts run (`redis.call('X'` and `redis.pcall('X'`),
/// upper-case, sorted, each once.
pub(crate) fn called_commands() -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for source in sources() {
        for call in ["redis.call(", "redis.pcall("] {
            for (at, _) in source.match_indices(call) {
                let rest = &source[at + call.len()..];
                let Some(quote) = rest.chars().next().filter(|c| matches!(c, '\'' | '"')) else {
                    continue;
                };
                if let Some(name) = rest[1..].split(quote).next() {
                    found.insert(name.to_ascii_uppercase());
                }
            }
        }
    }
    found.into_iter().collect()
}

macro_rules! publishing {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $(
            $(#[$doc])*
            pub(crate) static $name: Publishing = Publishing {
                classic: LazyLock::new(|| Script::new(include_str!(concat!("scripts/", $file)))),
                sharded: LazyLock::new(|| sharded(include_str!(concat!("scripts/", $file)))),
            };
        )*
        const PUBLISHING: &[&Publishing] = &[$(&$name),*];
        const PUBLISHING_SOURCES: &[&str] = &[$(include_str!(concat!("scripts/", $file))),*];
    };
}

publishing! {
    /// Compare-and-delete of one key holding an owner value + publish: an
    /// exclusive hold's release (the plain lock, the RW writer, each of
    /// Redlock's servers) and a waiting writer's intent withdrawn; see
    /// `scripts/release.lua`.
    RELEASE = "release.lua";
    /// Gives a read hold back; see `scripts/rwlock_read_release.lua`.
    READ_RELEASE = "rwlock_read_release.lua";
    /// Gives a permit back; see `scripts/semaphore_release.lua`.
    SEMAPHORE_RELEASE = "semaphore_release.lua";
}

scripts! {
    /// Exclusive hold (the plain lock and the RW writer are one): `SET NX
    /// PX` + fencing `INCR`, with the one-name-one-lock checks; see
    /// `scripts/exclusive_acquire.lua`.
    EXCLUSIVE_ACQUIRE = "exclusive_acquire.lua";
    /// Compare-and-`PEXPIRE` of a key holding an owner value: the renewal
    /// of an exclusive hold (on one server, or each of Redlock's).
    EXTEND = "extend.lua";
    /// Shared (read) hold; see `scripts/rwlock_read.lua`.
    READ = "rwlock_read.lua";
    /// One semaphore permit, with the stored permit count; see
    /// `scripts/semaphore_acquire.lua`.
    SEMAPHORE_ACQUIRE = "semaphore_acquire.lua";
    /// Renews a member of a ZSET of holders (a permit or a reader).
    RENEW_MEMBER = "semaphore_renew.lua";
    /// Counts the unexpired members of a ZSET of holders.
    COUNT_LIVE = "count_live.lua";
    /// Redlock's per-server acquisition: `SET NX PX` + fencing `INCR` on a
    /// server that holds nothing else; see `scripts/acquire.lua`.
    ACQUIRE = "acquire.lua";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_forms_publish_sharded() {
        for p in PUBLISHING {
            let classic = p.get(false);
            let sharded = p.get(true);
            assert_ne!(classic.get_hash(), sharded.get_hash());
        }
        assert!(all().len() >= 3 * 2);
        assert_eq!(sources().len(), all().len());
    }

    #[test]
    fn the_scripts_marks_are_the_clients() {
        use crate::redis::protocol::keys::{READERS_MARK, SEMAPHORE_MARK};
        let quoted = |mark: &str| format!("'{mark}'");
        let marks_in = |file: &str| {
            let source = sources()
                .into_iter()
                .find(|s| s.contains(file))
                .unwrap_or_else(|| panic!("{file} not found"));
            (
                source.contains(&quoted(READERS_MARK)),
                source.contains(&quoted(SEMAPHORE_MARK)),
            )
        };
        // Every script that reads or writes a mark spells it as the client
        // does (the listing and `is_locked` compare with these).
        for (header, readers, semaphore) in [
            ("-- Take a resource exclusively", true, true),
            ("-- Take a shared (read) hold.", true, true),
            ("-- Give a read lock back", true, false),
            ("-- Renew a held permit", true, true),
            ("-- Take one permit of a semaphore.", false, true),
            ("-- Give a permit back", false, true),
        ] {
            assert_eq!(marks_in(header), (readers, semaphore), "{header}");
        }
        for source in sources() {
            for mark in source
                .match_indices("'lockyard:")
                .map(|(at, _)| &source[at..])
            {
                let mark = &mark[1..mark[1..].find('\'').map_or(mark.len(), |end| end + 1)];
                assert!(
                    [READERS_MARK, SEMAPHORE_MARK].contains(&mark),
                    "unknown mark {mark:?}"
                );
            }
        }
    }

    #[test]
    fn called_commands_are_read_from_every_script() {
        let called = called_commands();
        for cmd in [
            "SET", "INCR", "PEXPIRE", "PUBLISH", "SPUBLISH", "ZADD", "DEL",
        ] {
            assert!(called.iter().any(|c| c == cmd), "{cmd} in {called:?}");
        }
    }
}
