#!/usr/bin/env bash
# sipp UAC -> sipedge -> sipp UAS in containers: docker/compose.yml (kernel
# mode) and docker/compose.afpacket.yml (afpacket mode: sipedge's own stack
# owns an address on the container's eth0 that the container kernel does
# not; calls over UDP and TCP).
#
#   docker/test.sh          # both: kernel mode, then afpacket mode
#   docker/test.sh proxy    # kernel mode only (docker/compose.yml)
#   docker/test.sh afpacket # afpacket mode only (docker/compose.afpacket.yml)
#   docker/test.sh floor    # UAC straight to UAS (no proxy, no cargo build):
#                           # checks the base image, the network and sipp
#
# Builds the base image only when missing (docker/build-base.sh; no registry,
# never `docker pull`), then the sipedge image from a release build (the
# compose files name the images and have no build section: there is no
# registry to pull from, and the image is built here from a staged binary,
# so `up --build` needs this script, or the same two steps, first). Always
# tears each compose project down on exit.
# Exit status: the first failing UAC's (sipp: 0 = every call succeeded).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE="${1:-all}"
case $MODE in
  all|proxy|afpacket|floor) ;;
  *) echo "docker/test.sh: unknown mode $MODE (all, proxy, afpacket, floor)" >&2; exit 2 ;;
esac
PROJECT="${SIPEDGE_COMPOSE_PROJECT:-sipedge-test}"
WALL="${SIPEDGE_DOCKER_TIMEOUT:-300}"
export SIPEDGE_IMAGE="${SIPEDGE_IMAGE:-sipedge:test}"

log() { printf '[docker/test %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  log "installing docker-compose (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
  COMPOSE=(docker-compose)
else
  log "neither 'docker compose' nor docker-compose is installed"
  exit 1
fi
BASE_COMPOSE=("${COMPOSE[@]}")

# compose_for FILE PROJECT: sets COMPOSE to the command for that file.
compose_for() { COMPOSE=("${BASE_COMPOSE[@]}" -p "$2" -f "$1"); }

STAGE=""
PROJECTS=()
down() {
  local f p
  for p in "${PROJECTS[@]}"; do
    f=${p#*=}
    "${BASE_COMPOSE[@]}" -p "${p%%=*}" -f "$f" down -v --remove-orphans >/dev/null 2>&1 || true
  done
  [[ -n $STAGE ]] && rm -rf "$STAGE"
  return 0
}
trap down EXIT

t0=$(date +%s)
docker/build-base.sh

if [[ $MODE != floor ]]; then
  log "cargo build --release"
  cargo build --release
  [[ -f etc/sipedge.toml ]] || { log "etc/sipedge.toml missing"; exit 1; }
  STAGE=$(mktemp -d /tmp/sipedge-docker.XXXXXX)
  mkdir -p "$STAGE/target/release" "$STAGE/etc"
  cp target/release/sipedge "$STAGE/target/release/"
  cp etc/sipedge.toml "$STAGE/etc/"
  log "docker build -t $SIPEDGE_IMAGE"
  DOCKER_BUILDKIT=0 docker build -q -t "$SIPEDGE_IMAGE" -f docker/Dockerfile "$STAGE" >/dev/null
fi

# run_file FILE PROJECT [SERVICES...]: compose up; returns the UAC's status.
run_file() {
  local file=$1 project=$2 rc=0
  shift 2
  PROJECTS+=("$project=$file")
  compose_for "$file" "$project"
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true # leftovers
  log "compose up: $file ($project)"
  if (($#)); then
    timeout "$WALL" "${COMPOSE[@]}" up --no-deps --abort-on-container-exit \
      --exit-code-from uac "$@" || rc=$?
  else
    timeout "$WALL" "${COMPOSE[@]}" up --abort-on-container-exit --exit-code-from uac || rc=$?
  fi
  if [[ $rc -ne 0 ]]; then
    log "FAILED: $file (exit $rc); logs:"
    "${COMPOSE[@]}" logs --no-color --tail 60 >&2 || true
  fi
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  return "$rc"
}

rc=0
case $MODE in
  floor)
    UAC_TARGET=198.18.50.10 run_file docker/compose.yml "$PROJECT" uas uac || rc=$?
    ;;
  proxy)
    run_file docker/compose.yml "$PROJECT" || rc=$?
    ;;
  afpacket)
    run_file docker/compose.afpacket.yml "$PROJECT-af" || rc=$?
    ;;
  all)
    # both run; the exit status is the first failing one's
    run_file docker/compose.yml "$PROJECT" || rc=$?
    rc2=0
    run_file docker/compose.afpacket.yml "$PROJECT-af" || rc2=$?
    ((rc != 0)) || rc=$rc2
    ;;
esac
log "done in $(($(date +%s) - t0)) s, exit $rc"
exit "$rc"
