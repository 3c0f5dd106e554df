#!/usr/bin/env bash
# Installs ferry on this host (root, Debian 12): its dependencies (scripts/setup.sh: runc,
# CRIU 4.2.1, ...), the ferry and ferryd binaries in /usr/local/bin, the systemd unit, shell
# completions and man pages; then enables and starts ferryd where systemd runs.
# Idempotent: a second run changes nothing that is already in place (and keeps
# /etc/default/ferryd as edited).
#
#   ./scripts/install.sh                 # build (release) and install everything
#   FERRY_SKIP_SETUP=1 ./scripts/install.sh   # dependencies are already there
#   FERRY_BIN_DIR=target/release ./scripts/install.sh   # install binaries built elsewhere
#   PREFIX=/usr/local (default); DESTDIR=/some/root stages everything below that root and
#   leaves systemd alone (for packaging, and for trying this script out)
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
BIN=$PREFIX/bin
SHARE=$PREFIX/share
D=${DESTDIR:-}
log() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[install] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: ferryd needs it, and this writes to $PREFIX and /etc"

if [ "${FERRY_SKIP_SETUP:-0}" != 1 ]; then
  ./scripts/setup.sh
fi

if [ -z "${FERRY_BIN_DIR:-}" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) or set FERRY_BIN_DIR to prebuilt binaries"
  log "building ferry and ferryd (release)"
  cargo build --release --quiet -p ferry -p ferryd
  FERRY_BIN_DIR=${CARGO_TARGET_DIR:-target}/release
fi
for b in ferry ferryd; do
  [ -x "$FERRY_BIN_DIR/$b" ] || die "$FERRY_BIN_DIR/$b is missing or not executable"
done

# Copies $1 to $2 with mode $3 only when the content differs; says whether it did.
changed=0
put() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    return 1
  fi
  install -D -m "$3" "$1" "$2"
  log "installed $2"
  changed=1
}

ferryd_changed=0
put "$FERRY_BIN_DIR/ferry" "$D$BIN/ferry" 0755 || true
put "$FERRY_BIN_DIR/ferryd" "$D$BIN/ferryd" 0755 && ferryd_changed=1 || true
unit_src=contrib/systemd/ferryd.service
if [ "$PREFIX" != /usr/local ]; then
  # The unit names the binary's path: follow the prefix.
  sed "s#/usr/local/bin/ferryd#$BIN/ferryd#" "$unit_src" > "${TMPDIR:-/tmp}/ferryd.service.$$"
  unit_src="${TMPDIR:-/tmp}/ferryd.service.$$"
  trap 'rm -f "${TMPDIR:-/tmp}/ferryd.service.$$"' EXIT
fi
unit_changed=0
put "$unit_src" "$D/etc/systemd/system/ferryd.service" 0644 && unit_changed=1 || true
# The options file is the operator's: written once, never overwritten.
if [ ! -e "$D/etc/default/ferryd" ]; then
  install -D -m 0644 contrib/systemd/ferryd.default "$D/etc/default/ferryd"
  log "installed /etc/default/ferryd (edit FERRYD_ARGS there)"
fi

# Completions and man pages come from the installed binary, so they match it.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f "${TMPDIR:-/tmp}/ferryd.service.$$"' EXIT
"$D$BIN/ferry" completion bash > "$tmp/ferry.bash"
"$D$BIN/ferry" completion zsh > "$tmp/_ferry"
"$D$BIN/ferry" completion fish > "$tmp/ferry.fish"
put "$tmp/ferry.bash" "$D$SHARE/bash-completion/completions/ferry" 0644 || true
put "$tmp/_ferry" "$D$SHARE/zsh/site-functions/_ferry" 0644 || true
put "$tmp/ferry.fish" "$D$SHARE/fish/vendor_completions.d/ferry.fish" 0644 || true
"$D$BIN/ferry" man --out "$tmp/man1" >/dev/null
man_changed=0
for page in "$tmp"/man1/*.1; do
  put "$page" "$D$SHARE/man/man1/$(basename "$page")" 0644 >/dev/null && man_changed=$((man_changed + 1)) || true
done
[ "$man_changed" = 0 ] || log "installed $man_changed man pages in $D$SHARE/man/man1"
if [ "$man_changed" != 0 ] && [ -z "$D" ] && command -v mandb >/dev/null; then
  mandb -q 2>/dev/null || true
fi

if [ -n "$D" ]; then
  log "staged under $D; systemd left alone"
elif [ -d /run/systemd/system ]; then
  [ "$unit_changed" = 1 ] && systemctl daemon-reload
  systemctl enable --quiet ferryd
  if ! systemctl is-active --quiet ferryd; then
    systemctl start ferryd
    log "started ferryd"
  elif [ "$ferryd_changed" = 1 ] || [ "$unit_changed" = 1 ]; then
    # Containers keep running: the unit stops ferryd alone (KillMode=process).
    systemctl restart ferryd
    log "restarted ferryd on the new binary"
  fi
  log "ferryd: $(systemctl is-active ferryd); try: ferry info"
else
  log "systemd is not running on this machine: the unit is installed but not started."
  log "start ferryd by hand: ferryd --root /var/lib/ferry --socket /run/ferry/ferry.sock &"
fi
[ "$changed" = 1 ] || log "everything was already installed"
