#!/usr/bin/env bash
# Installs everything ferry and its tests need on Debian 12 (root). Idempotent: a second run
# changes nothing and takes a few seconds.
set -euo pipefail

CRIU_MIN="4.2"
CRIU_PREFIX=/usr/local/sbin
# Where CRIU keeps its cache of kernel probes (criu.kdat). CRIU writes it only on a tmpfs, so
# that it dies with the boot; this machine's /run is on the root disk, so ours is a tmpfs of
# its own. Without the cache every restore probes the kernel again: ~25 ms of the downtime.
CRIU_RUNDIR=/run/criu
SRC_LIST=/etc/apt/sources.list.d/ferry-unstable-src.sources
BUILD_DIR=${FERRY_BUILD_DIR:-/var/cache/ferry-build}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (containers, namespaces and CRIU need it)"

APT_PKGS=(
  runc iptables iproute2 busybox-static redis-server redis-tools iputils-arping ffmpeg
  python3 ca-certificates xz-utils dpkg-dev
  # bench/: Podman's checkpoint/restore flow, run side by side with ferry
  podman
  # tests/registry.rs: a real OCI registry, and htpasswd for its basic auth
  docker-registry apache2-utils
  # CRIU build dependencies
  build-essential libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev libgnutls28-dev uuid-dev
  pkgconf python3-protobuf
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts redis-server as a service; ferry's tests run their own copies in containers.
  systemctl disable --now redis-server >/dev/null 2>&1 || true
  service redis-server stop >/dev/null 2>&1 || true
fi

criu_version_ok() {
  local v
  v=$("$CRIU_PREFIX/criu" --version 2>/dev/null | sed -n 's/^Version: *//p') || return 1
  [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$CRIU_MIN" "$v" | sort -V | head -1)" = "$CRIU_MIN" ]
}

# Built by this script: it looks for its kernel-probe cache in $CRIU_RUNDIR.
criu_rundir_ok() {
  grep -qaF "$CRIU_RUNDIR/criu.kdat" "$CRIU_PREFIX/criu"
}

# The deb-src entry reuses the URI of the machine's own Debian sources, so no mirror is named here.
debian_uri() {
  local uri=""
  if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
    uri=$(awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i}' /etc/apt/sources.list.d/*.sources \
          | grep -v -- '-security' | grep '/debian/\?$' | head -1)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || die "could not find a Debian URI in the apt sources"
  printf '%s\n' "$uri"
}

build_criu() {
  local uri keyring
  uri=$(debian_uri)
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  if [ ! -f "$SRC_LIST" ]; then
    log "adding deb-src for unstable from the machine's apt URI"
    cat >"$SRC_LIST" <<SRC
Types: deb-src
URIs: $uri
Suites: unstable
Components: main
Signed-By: $keyring
SRC
    apt-get update -qq
  fi
  mkdir -p "$BUILD_DIR"
  cd "$BUILD_DIR"
  # The packaging tarball may be missing on the mirror (404); the upstream tarball is all we need.
  apt-get source --download-only criu >/dev/null 2>&1 || log "apt-get source reported a failure (packaging tarball); checking what arrived"
  local dsc orig ver want have
  dsc=$(ls -1 criu_*.dsc 2>/dev/null | sort -V | tail -1)
  [ -n "$dsc" ] || die "no criu .dsc downloaded from unstable"
  orig=$(awk '/^Checksums-Sha256:/ {f=1; next} /^[^ ]/ {f=0} f && $3 ~ /orig\.tar\.xz$/ {print $3}' "$dsc" | head -1)
  want=$(awk '/^Checksums-Sha256:/ {f=1; next} /^[^ ]/ {f=0} f && $3 ~ /orig\.tar\.xz$/ {print $1}' "$dsc" | head -1)
  [ -n "$orig" ] && [ -f "$orig" ] || die "upstream tarball $orig named in $dsc did not download"
  have=$(sha256sum "$orig" | cut -d' ' -f1)
  [ "$have" = "$want" ] || die "sha256 mismatch for $orig: .dsc says $want, file is $have"
  ver=${orig#criu_}; ver=${ver%.orig.tar.xz}
  log "building CRIU $ver (sha256 verified)"
  rm -rf "criu-$ver"
  tar -xf "$orig"
  make -C "criu-$ver" -j"$(nproc)" RUNDIR="$CRIU_RUNDIR" criu >"$BUILD_DIR/criu-build.log" 2>&1 \
    || { tail -30 "$BUILD_DIR/criu-build.log" >&2; die "CRIU build failed (log: $BUILD_DIR/criu-build.log)"; }
  install -m 0755 "criu-$ver/criu/criu" "$CRIU_PREFIX/criu"
}

if criu_version_ok && criu_rundir_ok; then
  log "CRIU $("$CRIU_PREFIX/criu" --version | sed -n 's/^Version: *//p') already installed"
else
  build_criu
  criu_version_ok || die "installed CRIU is not >= $CRIU_MIN"
  criu_rundir_ok || die "the CRIU built does not keep its cache in $CRIU_RUNDIR"
fi
mkdir -p "$CRIU_RUNDIR"
if [ "$(stat -f -c %T "$CRIU_RUNDIR")" != tmpfs ]; then
  log "mounting a tmpfs on $CRIU_RUNDIR for CRIU's kernel-probe cache"
  mount -t tmpfs -o mode=0700,size=1m ferry-criu "$CRIU_RUNDIR"
fi
# Debian's criu 3.17 (if present) must never shadow ours.
if [ -x /usr/sbin/criu ] && [ "$(command -v criu)" != "$CRIU_PREFIX/criu" ]; then
  die "another criu shadows $CRIU_PREFIX/criu on PATH: $(command -v criu)"
fi

# CRIU's lazy-pages transfer needs big pipes; root lacks CAP_SYS_RESOURCE here.
if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt 4194304 ]; then
  log "setting fs.pipe-max-size = 4194304"
  sysctl -qw fs.pipe-max-size=4194304
fi
# ...and keep it across reboots.
if [ ! -f /etc/sysctl.d/60-ferry.conf ]; then
  printf '# ferry: CRIU lazy-pages needs big pipes (root lacks CAP_SYS_RESOURCE here)\nfs.pipe-max-size = 4194304\n' \
    > /etc/sysctl.d/60-ferry.conf
fi

check=$("$CRIU_PREFIX/criu" check 2>&1) || true
echo "$check" | grep -q "Looks good" || die "criu check failed:
$check"
log "criu check: Looks good ($("$CRIU_PREFIX/criu" --version | sed -n 's/^Version: *//p'))"
# criu check probed the kernel and kept the result: every later CRIU loads it.
[ -s "$CRIU_RUNDIR/criu.kdat" ] || die "CRIU kept no kernel-probe cache in $CRIU_RUNDIR"
