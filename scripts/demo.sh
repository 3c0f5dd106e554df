#!/usr/bin/env bash
# The main job: live migration of Redis under load between two lab hosts.
#  - builds a two-host lab (network namespaces, one ferryd each, mutual TLS between them),
#  - runs Redis on host-a with 256 MiB of data,
#  - keeps two clients writing over persistent connections,
#  - migrates Redis to host-b and prints the report,
#  - checks that every acknowledged write is there, on the same connections,
#  - tears the lab down.
# Run as root. FERRY_DEMO_KEYS changes the dataset (1 KiB values; default 262144 = 256 MiB);
# MODE=stop-copy|lazy|auto (default auto, which picks post-copy at 256 MiB) chooses the mode.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building ferry"
# Release build: downtime is what users judge ferry by, and debug doubles it.
cargo build --workspace --release --quiet
BIN=$PWD/target/release
LAB="$BIN/ferry-lab --dir /run/ferry-demo --prefix ferrydemo"
WORK=$(mktemp -d /var/tmp/ferry-demo.XXXXXX)
KEYS=${FERRY_DEMO_KEYS:-262144}
IP=10.77.1.10

cleanup() {
  set +e
  touch "$WORK/stop"
  wait 2>/dev/null
  $LAB down >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== lab: two hosts and a client on one L2 fabric"
$LAB down >/dev/null 2>&1 || true
$LAB up --hosts 2
echo "== image: redis-server and its library closure as an OCI layout"
"$BIN/ferry-lab" mkimage redis "$WORK/redis-oci" >/dev/null
$LAB exec host-a -- ferry image import "$WORK/redis-oci"
$LAB exec host-a -- ferry run -d --name redis --ip $IP redis \
  redis-server --bind 0.0.0.0 --protected-mode no --save "" --appendonly no --enable-debug-command yes
for _ in $(seq 100); do
  [ "$($LAB client -- redis-cli -h $IP PING 2>/dev/null)" = PONG ] && break; sleep 0.1
done
echo "== loading $KEYS keys of 1 KiB"
$LAB client -- redis-cli -h $IP DEBUG POPULATE "$KEYS" bulk 1024 >/dev/null
$LAB client -- redis-cli -h $IP INFO memory | grep used_memory_human
echo "== clients writing (SET + INCR) over two persistent connections"
$LAB redis-load --ip $IP --connections 2 --stop-file "$WORK/stop" > "$WORK/load.txt" &
LOAD=$!
sleep 2
echo "== ferry migrate redis --to host-b --mode ${MODE:-auto}"
$LAB exec host-a -- ferry migrate redis --to host-b --mode "${MODE:-auto}"
sleep 2
touch "$WORK/stop"
wait $LOAD && status=0 || status=$?
echo "== what the clients saw"
cat "$WORK/load.txt"
echo "== ferry ps on host-a"
$LAB exec host-a -- ferry ps
echo "== ferry ps on host-b"
$LAB exec host-b -- ferry ps
echo "DBSIZE on host-b: $($LAB client -- redis-cli -h $IP DBSIZE)"
exit $status
