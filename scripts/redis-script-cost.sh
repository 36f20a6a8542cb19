#!/usr/bin/env bash
# Server-side cost of lockyard's Redis scripts beside the floors', in
# instructions per call, counted by callgrind on a private redis-server (so
# a loaded machine does not change the answer). Each script runs N times on
# free keys (a fresh random key per call, a 140-byte owner value as
# lockyard's), pipelined from redis-benchmark; the count includes the
# server's network and parsing work, the same for every row.
#
# Usage: scripts/redis-script-cost.sh [N]      (N = 20000 by default)
#
# Rows:
#   floor acquire        SET NX PX + INCR fence (the fenced floor's script)
#   exclusive_acquire    lockyard's (src/redis/protocol/scripts/)
#   first generation     the script before the marks (commit 894b0b2: SET NX
#                        PX, EXISTS of the readers/intent/semaphore keys,
#                        INCR in a pcall), read from git
# (Releases are not here: redis-benchmark cannot release what it acquired,
# and a release of a key not held measures only the compare.)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20000}"
for tool in valgrind callgrind_control redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  >"$dir/valgrind.log" 2>&1 &
vg=$!
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; kill "$vg" 2>/dev/null || true; wait "$vg" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
redis-cli -p "$port" ping >/dev/null

scripts=src/redis/protocol/scripts
cat >"$dir/floor_acquire.lua" <<'LUA'
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0}
LUA
git show 894b0b2:src/redis/protocol/scripts/exclusive_acquire.lua >"$dir/first_generation.lua"

value="$(python3 -c "print('t'*32 + chr(10) + 'x'*108, end='')")"
sha() { redis-cli -p "$port" SCRIPT LOAD "$(cat "$1")"; }
count() { # label, then the redis-benchmark command's arguments
  local label="$1"; shift
  redis-cli -p "$port" FLUSHALL >/dev/null # every row starts from an empty keyspace
  callgrind_control -z "$vg" >/dev/null 2>&1
  redis-benchmark -p "$port" -n "$N" -P 16 -c 2 -r 100000000 -q "$@" >/dev/null 2>&1
  callgrind_control -d "$vg" >/dev/null 2>&1
  local out total
  out="$(ls -t "$dir"/cg.out* | head -1)"
  total="$(grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}')"
  printf '%-22s %8d instructions per call\n' "$label" $((total / N))
}
# Each script's KEYS and ARGV as it takes them (the same lock key and value).
floor_keys=(2 "k:{__rand_int__}:lock" k:fence "$value" 30000)
acquire_keys=(4 "k:{__rand_int__}:lock" k:readers k:intent k:fence "$value" 30000 0)
first_keys=(5 "k:{__rand_int__}:lock" k:readers k:intent k:sem k:fence "$value" 30000 0)
for round in 1 2; do
  echo "round $round"
  count "floor acquire" EVALSHA "$(sha "$dir/floor_acquire.lua")" "${floor_keys[@]}"
  count "exclusive_acquire" EVALSHA "$(sha "$scripts/exclusive_acquire.lua")" "${acquire_keys[@]}"
  count "first generation" EVALSHA "$(sha "$dir/first_generation.lua")" "${first_keys[@]}"
done
