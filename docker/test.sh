#!/usr/bin/env bash
# sipp UAC -> sipedge -> sipp UAS in containers (docker/compose.yml).
#
#   docker/test.sh          # full run: base image, release build, image, compose
#   docker/test.sh floor    # UAC straight to UAS (no proxy, no cargo build):
#                           # checks the base image, the network and sipp
#
# Builds the base image only when missing (docker/build-base.sh; no registry,
# never `docker pull`). Always tears the compose project down on exit.
# Exit status: the UAC's (sipp: 0 = every call succeeded).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE="${1:-proxy}"
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
COMPOSE+=(-p "$PROJECT" -f docker/compose.yml)

STAGE=""
down() {
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
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

down # leftovers of an interrupted run
log "compose up ($MODE)"
rc=0
if [[ $MODE == floor ]]; then
  UAC_TARGET=198.18.50.10 timeout "$WALL" "${COMPOSE[@]}" up --no-deps \
    --abort-on-container-exit --exit-code-from uac uas uac || rc=$?
else
  timeout "$WALL" "${COMPOSE[@]}" up --abort-on-container-exit --exit-code-from uac || rc=$?
fi
if [[ $rc -ne 0 ]]; then
  log "FAILED (exit $rc); logs:"
  "${COMPOSE[@]}" logs --no-color --tail 60 >&2 || true
fi
log "done in $(($(date +%s) - t0)) s, exit $rc"
exit "$rc"
