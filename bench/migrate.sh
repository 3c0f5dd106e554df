#!/usr/bin/env bash
# Benchmark: live migration of Redis under load between two lab hosts.
# For each dataset size, REPEATS migrations back and forth (A→B, B→A, …), each with two
# clients writing over persistent connections. Reports downtime (freeze → running on the
# destination), the longest stall the clients saw, and per-phase times; writes
# bench/results/migrate-<date>.md and .json. Run as root after scripts/setup.sh.
#   SIZES="256 1024" (MiB)   REPEATS=3   MODE=stop-copy (or lazy, auto)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Release build: downtime is what users judge ferry by, and debug doubles it.
cargo build --workspace --release --quiet
BIN=$PWD/target/release
LAB="$BIN/ferry-lab --dir /run/ferry-bench --prefix ferrybench"
SIZES=${SIZES:-"256 1024"}
REPEATS=${REPEATS:-3}
WORK=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
OUT=bench/results; mkdir -p $OUT
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
IP=10.77.1.10
trap '$LAB down >/dev/null 2>&1; rm -rf "$WORK"' EXIT

"$BIN/ferry-lab" mkimage redis "$WORK/redis-oci" >/dev/null
: > "$WORK/runs.jsonl"
for size in $SIZES; do
  $LAB down >/dev/null 2>&1 || true
  $LAB up --hosts 2 >/dev/null
  $LAB exec host-a -- ferry image import "$WORK/redis-oci" >/dev/null
  $LAB exec host-a -- ferry run -d --name redis --ip $IP redis redis-server --bind 0.0.0.0 \
    --protected-mode no --save "" --appendonly no --enable-debug-command yes >/dev/null
  for _ in $(seq 100); do [ "$($LAB client -- redis-cli -h $IP PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  $LAB client -- redis-cli -h $IP DEBUG POPULATE $((size * 1024)) bulk 1024 >/dev/null
  from=host-a; to=host-b
  for run in $(seq "$REPEATS"); do
    rm -f "$WORK/stop"
    $LAB redis-load --ip $IP --connections 2 --stop-file "$WORK/stop" --json > "$WORK/load.json" &
    load=$!
    sleep 1
    $LAB exec $from -- ferry migrate redis --to $to --mode "${MODE:-stop-copy}" --json > "$WORK/report.json" 2>/dev/null || true
    sleep 1; touch "$WORK/stop"; wait $load || true
    python3 - "$size" "$run" "$WORK/report.json" "$WORK/load.json" >> "$WORK/runs.jsonl" <<'PY'
import json, sys
size, run, rep, load = sys.argv[1:5]
r = json.load(open(rep)); l = json.load(open(load))
print(json.dumps({
  "size_mib": int(size), "run": int(run), "from": r["from"], "to": r["to"],
  "outcome": r["outcome"], "downtime_ms": r["downtime_ms"], "total_ms": r["total_ms"],
  "client_stall_ms": max(c["longest_stall_ms"] for c in l),
  "writes_verified": all(c["all_acknowledged_writes_present"] for c in l),
  "pages_bytes": r["bytes"]["pages"],
  "phases": {p["phase"]: p["ms"] for p in r["phases"]},
  "breakdown": r.get("downtime_breakdown"),
  "source_cleanup_ms": r.get("source_cleanup_ms"),
}))
PY
    tail -1 "$WORK/runs.jsonl"
    tmp=$from; from=$to; to=$tmp
  done
done
cp "$WORK/runs.jsonl" "$OUT/migrate-$STAMP.jsonl"
python3 - "$WORK/runs.jsonl" > "$OUT/migrate-$STAMP.md" <<'PY'
import json, sys, statistics as st
runs = [json.loads(l) for l in open(sys.argv[1])]
print("| size | runs | committed | writes verified | downtime median (min–max) ms | client stall median (min–max) ms | dump ms | restore ms |")
print("|---|---|---|---|---|---|---|---|")
for size in sorted({r["size_mib"] for r in runs}):
    rs = [r for r in runs if r["size_mib"] == size]
    d = [r["downtime_ms"] or 0 for r in rs]; c = [r["client_stall_ms"] for r in rs]
    print(f"| {size} MiB | {len(rs)} | {sum(r['outcome']=='committed' for r in rs)} | "
          f"{sum(r['writes_verified'] for r in rs)} | {st.median(d):.0f} ({min(d)}–{max(d)}) | "
          f"{st.median(c):.0f} ({min(c)}–{max(c)}) | {st.median([r['phases'].get('dump',0) for r in rs]):.0f} | "
          f"{st.median([r['phases'].get('restore',0) for r in rs]):.0f} |")
# Where the frozen window went: the median of each part (ms), and the details under it.
rows = [r for r in runs if r.get("breakdown")]
if rows:
    names = [p["part"] for p in rows[0]["breakdown"]["parts"]]
    details = [("criu_dump", k) for k in ("freezing_ms", "memdump_ms", "memwrite_ms", "frozen_ms")] + \
              [("restore", k) for k in ("destination_ms", "page_server_ms", "runc_restore_ms",
                                        "criu_restore_ms", "round_trip_ms")]
    print()
    print("| size | " + " | ".join(names) + " | between | total | " +
          " | ".join(f"{a}.{k}" for a, k in details) + " |")
    print("|---" * (len(names) + 3 + len(details)) + "|")
    for size in sorted({r["size_mib"] for r in rows}):
        rs = [r["breakdown"] for r in rows if r["size_mib"] == size]
        med = lambda f: f"{st.median([f(b) or 0 for b in rs]):.0f}"
        cells = [med(lambda b, n=n: next((p["ms"] for p in b["parts"] if p["part"] == n), 0)) for n in names]
        cells += [med(lambda b: b["unaccounted_ms"]), med(lambda b: b["total_ms"])]
        cells += [med(lambda b, a=a, k=k: (b.get(a) or {}).get(k)) for a, k in details]
        print(f"| {size} MiB | " + " | ".join(cells) + " |")
PY
cat "$OUT/migrate-$STAMP.md"
