#!/usr/bin/env bash
# Benchmark: checkpoint and restore of Redis on one host (lab host-a), and `ferry run` itself.
#   SIZE=256 (MiB of Redis data)  REPEATS=3
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Release build: downtime is what users judge ferry by, and debug doubles it.
cargo build --workspace --release --quiet
BIN=$PWD/target/release
LAB="$BIN/ferry-lab --dir /run/ferry-bench-cr --prefix ferrybenchcr"
SIZE=${SIZE:-256}; REPEATS=${REPEATS:-3}
WORK=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
IP=10.77.1.10
trap '$LAB down >/dev/null 2>&1; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", (b - a) * 1000}'; }

"$BIN/ferry-lab" mkimage busybox "$WORK/busybox" >/dev/null
"$BIN/ferry-lab" mkimage redis "$WORK/redis" >/dev/null
$LAB down >/dev/null 2>&1 || true
$LAB up --hosts 1 >/dev/null
$LAB exec host-a -- ferry image import "$WORK/busybox" >/dev/null
$LAB exec host-a -- ferry image import "$WORK/redis" >/dev/null
for i in $(seq "$REPEATS"); do
  t0=$(now); $LAB exec host-a -- ferry run -d --name "b$i" busybox sleep 1000 >/dev/null; t1=$(now)
  echo "ferry run (busybox, detached): $(ms "$t0" "$t1") ms"
done
$LAB exec host-a -- ferry run -d --name redis --ip $IP redis redis-server --bind 0.0.0.0 \
  --protected-mode no --save "" --appendonly no --enable-debug-command yes >/dev/null
for _ in $(seq 100); do [ "$($LAB client -- redis-cli -h $IP PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
$LAB client -- redis-cli -h $IP DEBUG POPULATE $((SIZE * 1024)) bulk 1024 >/dev/null
echo "redis used_memory: $($LAB client -- redis-cli -h $IP INFO memory | grep used_memory_human | tr -d '\r')"
for i in $(seq "$REPEATS"); do
  $LAB exec host-a -- ferry checkpoint redis --name "c$i" --json > "$WORK/cp.json"
  $LAB exec host-a -- ferry restore redis --from "c$i" --json > "$WORK/rs.json"
  python3 - "$WORK/cp.json" "$WORK/rs.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2])); s = c["stats"]
print(f"checkpoint: runc {c['checkpoint_ms']} ms (frozen {s['frozen_time_us']//1000} ms, memdump {s['memdump_time_us']//1000} ms, "
      f"{s['pages_written']} pages), rootfs+volumes {c['files_ms']} ms, total {c['total_ms']} ms, CRIU images {c['criu_image_bytes']>>20} MiB; "
      f"restore: runc {r['restore_ms']} ms, total {r['total_ms']} ms")
PY
  $LAB exec host-a -- ferry checkpoint rm redis "c$i" >/dev/null
done
