#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, every test.
#
#   scripts/test.sh
#
# As root, installs the tools the integration tests need when missing
# (sipp from sip-tester, promtool from prometheus, iproute2, ping from
# iputils-ping). Not as root it only warns; the tests that need a missing
# tool (or root: the afpacket network-namespace tests) then skip with a
# message, unless SIPEDGE_REQUIRE_ROOT_TESTS=1 or CI=true, where a skip is a failure.
# SIPEDGE_DOCKER_TESTS=1 also runs docker/test.sh (slow: builds images).
# Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s [%(%H:%M:%S)T]\n' "$*" -1; }

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: missing ${missing[*]} (not root: not installing); dependent tests skip" >&2
  fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --doc"
cargo test --doc

step "cargo build --examples (the netns tests run examples/netstack_echo)"
cargo build --examples

step "cargo test --all-targets --no-fail-fast"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
set +e
cargo test --all-targets --no-fail-fast 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# one closing line for the whole suite: "N passed, N failed"
summary=$(awk '/^test result:/ {p += $4; f += $6} END {printf "%d passed, %d failed", p, f}' "$results")
(( status == 0 )) || { echo "$summary"; exit "$status"; }

step "fuzz targets build (cargo check in fuzz/)"
(cd fuzz && cargo check --quiet)

if [[ "${SIPEDGE_DOCKER_TESTS:-0}" == 1 ]]; then
  step "docker/test.sh"
  docker/test.sh
fi

step "all tests passed"
echo "$summary"
