#!/usr/bin/env bash
# The test command: installs what the tests need, builds, checks style, runs every test
# (unit, real runc/CRIU integration, multi-host e2e in the lab). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The fault-matrix e2e tests need a ferryd that obeys injected faults; only test builds have
# the hook. Every cargo command below passes the same features, so one build serves them all
# (the e2e tests run target/debug/ferryd as built here).
FEATURES=(--features ferryd/fault-injection)
echo "== fmt + clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet "${FEATURES[@]}" -- -D warnings
# ...and the engine as users get it, without the hook.
cargo clippy -p ferry-core --lib --quiet -- -D warnings
echo "== build"
cargo build --workspace --quiet "${FEATURES[@]}"
echo "== tests"
# CI has root, CRIU and runc: a unit test that would skip for lack of one fails here instead.
export FERRY_TEST_NO_SKIP=1
# Tests that start daemons and containers share the machine's 2 cores: keep parallelism modest.
cargo test --workspace --quiet "${FEATURES[@]}" -- --test-threads="${FERRY_TEST_THREADS:-2}" "$@"
