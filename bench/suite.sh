#!/usr/bin/env bash
# The benchmark suite: ferry (stop-and-copy, and post-copy where the build has it), Podman's
# checkpoint --export → copy → restore --import, and the machine's limit, side by side in one
# two-host lab. Redis at SIZES MiB under one persistent writer, plus the counter baseline.
# Writes bench/results/suite-<stamp>.{jsonl,md,png}. Not part of the tests.
#
#   bench/suite.sh                          # 256, 1024, 4096 MiB, 3 repeats (about 35 min)
#   SIZES=64 REPEATS=1 bench/suite.sh       # a quick check
#   METHODS=ferry,podman NO_COUNTER=1 bench/suite.sh --fabric-mib 512
#   bench/suite.sh --help                   # every option (flags override the variables)
#
# Run as root after scripts/setup.sh, on a machine nobody else loads: the numbers are wall
# times. It takes /tmp/ferry-lab.lock for the whole run, as every lab user does.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
# Release build: downtime is what users judge ferry by, and debug doubles it.
cargo build --release --quiet -p ferry -p ferryd -p ferry-lab -p ferry-bench
BIN=$TARGET/release
if [ "${1:-}" = report ]; then exec "$BIN/ferry-bench" "$@"; fi
# -o: the lab's ferryds must not inherit the lock (CRIU refuses to dump inherited flocks).
exec flock -o /tmp/ferry-lab.lock "$BIN/ferry-bench" suite "$@"
