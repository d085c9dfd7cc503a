#!/usr/bin/env bash
# Issue #10 acceptance run (see stateful.py): Kamailio stateful + dispatcher vs
# sipedge stateful vs sipedge stateless on the shared sipp harness.
#   cargo build --release
#   BENCH_OUT=/tmp/sipedge-bench-stateful bench/stateful.sh ladder|fixed|idle|linger0 TAG
# env: ROUNDS, FIRST_ROUND, TRANSPORTS (u1,t1), DURATION (8), RATES (ladder), REFINE, RATE (fixed, linger0)
set -euo pipefail
exec python3 "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/stateful.py" "$@"
