#!/usr/bin/env bash
# The main job: a local demo of ferry on one host. Runs a Redis container, writes keys over its
# IP, shows `ferry ps`, then cleans up. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --release --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d /var/tmp/ferry-demo.XXXXXX)
NS=ferry-demo
SOCK=$WORK/ferry.sock
ferry() { "$BIN/ferry" --socket "$SOCK" "$@"; }
in_ns() { nsenter --net=/run/netns/$NS -- "$@"; }

cleanup() {
  set +e
  if [ -S "$SOCK" ]; then ferry rm -f redis >/dev/null 2>&1; fi
  [ -n "${FERRYD_PID:-}" ] && kill "$FERRYD_PID" 2>/dev/null && wait "$FERRYD_PID" 2>/dev/null
  ip netns del $NS 2>/dev/null
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns del $NS 2>/dev/null || true
ip netns add $NS
ip -n $NS link set lo up

echo "== building the Redis image (redis-server + its library closure) as an OCI layout"
"$BIN/ferry-lab" mkimage redis "$WORK/redis-oci"

echo "== starting ferryd (state in $WORK/root, network namespace $NS)"
in_ns "$BIN/ferryd" --root "$WORK/root" --socket "$SOCK" --runc-root "$WORK/runc" \
  --cgroup-parent ferry-demo --bridge-address 10.79.0.1/16 --host-name demo >"$WORK/ferryd.log" 2>&1 &
FERRYD_PID=$!
for _ in $(seq 100); do ferry info >/dev/null 2>&1 && break; sleep 0.1; done

ferry image import "$WORK/redis-oci"
ferry image ls
t0=$(date +%s.%N)
ferry run -d --name redis --ip 10.79.0.10 redis
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN {printf "ferry run took %.3f s\n", b - a}'
for _ in $(seq 100); do [ "$(in_ns redis-cli -h 10.79.0.10 PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
echo "== writing 1000 keys over the container's IP"
for i in $(seq 1000); do echo "SET key:$i value-$i"; done | in_ns redis-cli -h 10.79.0.10 >/dev/null
echo "DBSIZE: $(in_ns redis-cli -h 10.79.0.10 DBSIZE)"
echo "GET key:500: $(in_ns redis-cli -h 10.79.0.10 GET key:500)"
ferry ps
