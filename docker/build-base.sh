#!/usr/bin/env bash
# Build the local base image sipedge-base:bookworm without any registry:
# debootstrap a minimal Debian bookworm, install sipp (sip-tester) and a few
# tools inside it with chroot apt-get, then `docker import` the tree.
# No `docker pull` anywhere: this workplace has no container registry.
#
# Idempotent: does nothing when the image already exists (FORCE=1 rebuilds).
# Needs root (debootstrap, chroot). The Debian mirror is taken from the host's
# own apt configuration unless DEBIAN_MIRROR is set.
set -euo pipefail

IMAGE="${SIPEDGE_BASE_IMAGE:-sipedge-base:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
PACKAGES="sip-tester ca-certificates iproute2 procps"

log() { printf '[build-base %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE exists; nothing to do (FORCE=1 rebuilds)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "needs root (debootstrap + chroot)"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi

# The host's first Debian mirror (deb822 .sources or a one-line sources.list).
host_mirror() {
  local f line
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    line=$(grep -m1 -E '^URIs:.*/debian/?$' "$f" || true)
    if [[ -n $line ]]; then
      echo "${line#URIs:}" | awk '{print $1}'
      return 0
    fi
  done
  if [[ -f /etc/apt/sources.list ]]; then
    awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list
  fi
}
MIRROR="${DEBIAN_MIRROR:-$(host_mirror)}"
if [[ -z $MIRROR ]]; then
  log "no Debian mirror found in the host's apt sources; set DEBIAN_MIRROR"
  exit 1
fi

WORK=$(mktemp -d /var/tmp/sipedge-base.XXXXXX)
ROOTFS="$WORK/rootfs"
cleanup() {
  mountpoint -q "$ROOTFS/proc" 2>/dev/null && umount "$ROOTFS/proc" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap --variant=minbase $SUITE from the host's mirror into $ROOTFS"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log" >&2
  exit 1
}
log "debootstrap done in $(($(date +%s) - start)) s"

# chroot apt-get: no daemons started, DNS from the host, /proc mounted.
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOTFS/proc"
log "installing $PACKAGES inside the chroot"
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends $PACKAGES >"$WORK/apt.log" 2>&1 || {
  tail -n 30 "$WORK/apt.log" >&2
  exit 1
}
chroot "$ROOTFS" apt-get clean
umount "$ROOTFS/proc"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS/usr/sbin/policy-rc.d"
: >"$ROOTFS/etc/resolv.conf"
chroot "$ROOTFS" sipp -v >/dev/null 2>&1 || true

log "docker import -> $IMAGE"
tar -C "$ROOTFS" --numeric-owner -c . |
  docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
log "built $IMAGE in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
