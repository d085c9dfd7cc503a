#!/usr/bin/env bash
# Instruction counts, context switches and RSS growth per call of sipedge
# builds under the same sipp load (see stateful_perfstat.py).
#   bench/stateful_perfstat.sh OUT.jsonl base=/path/sipedge new=target/release/sipedge
set -euo pipefail
exec python3 "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/stateful_perfstat.py" "$@"
