#!/usr/bin/env bash
# Runs every test: unit, integration, doc tests, fuzz corpora, and the loom
# models. Installs redis-server and redis-cli (Debian) when missing, since
# the Redis tests start their own private servers and Clusters (created with
# `redis-cli --cluster create`) on free loopback ports. The TLS tests need
# nothing more: Debian's redis-server and redis-cli are built with TLS, and
# the tests make their CA and certificates themselves (rcgen, no openssl).
# The Sentinel tests run `redis-server <config> --sentinel`: Debian's
# redis-server can; where it cannot, the redis-sentinel package is installed.
# Installs postgresql (Debian) when initdb is missing, pgbouncer when it is.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-server or redis-cli not found; installing them (Debian packages redis-server, redis-tools)"
  apt_install redis-server redis-tools
fi

# Whether redis-server runs as a sentinel: a config with a sentinel
# directive and no port parses, then exits for want of a listener.
sentinel_works() {
  local dir ok=1
  dir="$(mktemp -d)"
  printf 'port 0\nsentinel monitor probe 127.0.0.1 1 1\n' >"$dir/sentinel.conf"
  local out
  out="$(timeout 10 redis-server "$dir/sentinel.conf" --sentinel 2>&1 || true)"
  if grep -q "not listen anywhere" <<<"$out"; then
    ok=0
  fi
  rm -rf "$dir"
  return $ok
}
if ! sentinel_works; then
  echo "redis-server does not run as a sentinel; installing redis-sentinel (Debian)"
  apt_install redis-sentinel
  sentinel_works || { echo "redis-server --sentinel still does not work" >&2; exit 1; }
fi

# The Postgres tests start private servers with initdb and pg_ctl (run as
# the postgres user under root) on free loopback ports; never the machine's
# own server.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "initdb not found; installing it (Debian package postgresql)"
  apt_install postgresql
fi
# tests/postgres_pgbouncer.rs runs a private PgBouncer (as the postgres user
# under root) in front of a private server.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "pgbouncer not found; installing it (Debian package pgbouncer)"
  apt_install pgbouncer
fi

echo "== cargo test (all features)"
cargo test --workspace --all-features --lib --bins --tests --examples
echo "== doc tests"
cargo test --workspace --all-features --doc

# One model at a time: each is CPU-bound, and on a 2-core machine two at
# once took 486 s in a clean-clone CI run, 287 s in turn (2026-12-07).
if grep -q lockyard_loom src/loom.rs 2>/dev/null; then
  echo "== loom models (LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:=3})"
  LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS RUSTFLAGS="--cfg lockyard_loom" \
    CARGO_TARGET_DIR=target/loom cargo test --profile loom --lib -- loom --test-threads=1
fi
