#!/usr/bin/env bash
# Runs every test: unit, integration, doc tests, fuzz corpora, and the loom
# models. Installs redis-server and redis-cli (Debian) when missing, since
# the Redis tests start their own private servers and Clusters (created with
# `redis-cli --cluster create`) on free loopback ports. The TLS tests need
# nothing more: Debian's redis-server and redis-cli are built with TLS, and
# the tests make their CA and certificates themselves (rcgen, no openssl).
# Installs postgresql (Debian) when initdb is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-server or redis-cli not found; installing them (Debian packages redis-server, redis-tools)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi

# The Postgres tests start private servers with initdb and pg_ctl (run as
# the postgres user under root) on free loopback ports; never the machine's
# own server.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "initdb not found; installing it (Debian package postgresql)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

echo "== cargo test (all features)"
cargo test --workspace --all-features --lib --bins --tests --examples
echo "== doc tests"
cargo test --workspace --all-features --doc

if grep -q lockyard_loom src/loom.rs 2>/dev/null; then
  echo "== loom models (LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:=3})"
  LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS RUSTFLAGS="--cfg lockyard_loom" \
    CARGO_TARGET_DIR=target/loom cargo test --release --lib -- loom
fi
