#!/usr/bin/env bash
# The test command: installs what the tests need, builds, checks style, runs every test
# (unit, real runc/CRIU integration, multi-host e2e in the lab). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== fmt + clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== build"
cargo build --workspace --quiet
echo "== tests"
# CI has root, CRIU and runc: a unit test that would skip for lack of one fails here instead.
export FERRY_TEST_NO_SKIP=1
# Tests that start daemons and containers share the machine's 2 cores: keep parallelism modest.
cargo test --workspace --quiet -- --test-threads="${FERRY_TEST_THREADS:-2}" "$@"
