#!/usr/bin/env bash
# UDP echo throughput over a veth pair: the userspace netstack (netstack_echo on AF_PACKET)
# against the same echo served by kernel sockets (kernel_udp_echo), interleaved in one run.
#
# usage (as root, from anywhere in the repo):
#   sudo bench/netstack_udp_echo.sh
#   SIZE=200 WINDOW=64 DURATION=5 REPEATS=3 V6=1 bench/netstack_udp_echo.sh
#   SKIP_BUILD=1 KERNEL_ONLY=1 DURATION=2 REPEATS=1 bench/netstack_udp_echo.sh     # kernel side only
#   SKIP_BUILD=1 NETSTACK_STANDIN=1 DURATION=2 REPEATS=1 bench/netstack_udp_echo.sh  # test the harness:
#        step (b) runs kernel_udp_echo instead of netstack_echo (server label "kernel-standin")
#
# Layout: netns "nsb-peer-PID" (load generator, veth 198.18.200.1/24, 2001:db8:200::1/64 nodad)
#         <-> netns "nsb-stk-PID" (the server). Each round runs
#   (a) kernel:   198.18.200.2/24 and 2001:db8:200::2/64 on the stack-side veth, kernel_udp_echo
#                 bound to both on port 5060;
#   (b) netstack: stack-side veth without any address and disable_ipv6=1, netstack_echo --iface ...
#                 --ipv4 198.18.200.2/24 --ipv6 2001:db8:200::2/64 --echo-port 5060 --abort-port 5061.
# then udp_echo_load from the peer netns against 198.18.200.2:5060 (and [2001:db8:200::2]:5060 if V6=1).
# Nothing is pinned (nproc is recorded in every line).
#
# env: SIZE (200) WINDOW (64) DURATION (5) SOCKETS (1) REPEATS (3) V6 (0)
#      ECHO_BIN (target/release/examples/netstack_echo) ECHO_ARGS (extra netstack_echo args)
#      SKIP_BUILD=1 (don't run cargo build --release --examples) BIN_DIR (target/release/examples)
#      KERNEL_ONLY=1 (skip step b)  NETSTACK_STANDIN=1 (step b serves with kernel_udp_echo)
# output: one JSON line per load run (udp_echo_load's fields plus "server","round","nproc"),
#         appended to bench/results/netstack-udp-echo-YYYYmmdd-HHMMSS.jsonl, then a table of medians.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,28p' "$0"; exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "netstack_udp_echo.sh: must run as root (network namespaces)" >&2; exit 1
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SIZE=${SIZE:-200}
WINDOW=${WINDOW:-64}
DURATION=${DURATION:-5}
SOCKETS=${SOCKETS:-1}
REPEATS=${REPEATS:-3}
V6=${V6:-0}
KERNEL_ONLY=${KERNEL_ONLY:-0}
NETSTACK_STANDIN=${NETSTACK_STANDIN:-0}
BIN_DIR=${BIN_DIR:-target/release/examples}
ECHO_BIN=${ECHO_BIN:-$BIN_DIR/netstack_echo}
ECHO_ARGS=${ECHO_ARGS:-}
KERNEL_BIN=$BIN_DIR/kernel_udp_echo
LOAD_BIN=$BIN_DIR/udp_echo_load

PORT=5060
ABORT_PORT=5061
PEER4=198.18.200.1/24
PEER6=2001:db8:200::1/64
STK4=198.18.200.2
STK6=2001:db8:200::2
NS_PEER="nsb-peer-$$"
NS_STK="nsb-stk-$$"
IF_PEER="vbp$$"
IF_STK="vbs$$"
NPROC=$(nproc)

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --examples
fi
for b in "$KERNEL_BIN" "$LOAD_BIN"; do
  [[ -x "$b" ]] || { echo "missing $b (build with cargo build --release --examples)" >&2; exit 1; }
done
if [[ "$KERNEL_ONLY" != 1 && "$NETSTACK_STANDIN" != 1 && ! -x "$ECHO_BIN" ]]; then
  echo "missing $ECHO_BIN (set ECHO_BIN, or KERNEL_ONLY=1 / NETSTACK_STANDIN=1)" >&2; exit 1
fi
KERNEL_BIN=$(realpath "$KERNEL_BIN"); LOAD_BIN=$(realpath "$LOAD_BIN")
[[ -x "$ECHO_BIN" ]] && ECHO_BIN=$(realpath "$ECHO_BIN")

mkdir -p bench/results
OUT="bench/results/netstack-udp-echo-$(date +%Y%m%d-%H%M%S).jsonl"

SERVER_PID=""

# Stops the server this script started: SIGTERM, at most 5 s, then SIGKILL.
stop_server() {
  local pid=$SERVER_PID
  [[ -n "$pid" ]] || return 0
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "server $pid ignored SIGTERM for 5 s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  stop_server
  ip netns del "$NS_PEER" 2>/dev/null || true
  ip netns del "$NS_STK" 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- namespaces and veth ---------------------------------------------------------------------
ip netns add "$NS_PEER"
ip netns add "$NS_STK"
ip link add "$IF_PEER" netns "$NS_PEER" type veth peer name "$IF_STK" netns "$NS_STK"
ip -n "$NS_PEER" link set lo up
ip -n "$NS_STK" link set lo up
ip -n "$NS_PEER" addr add "$PEER4" dev "$IF_PEER"
ip -n "$NS_PEER" addr add "$PEER6" dev "$IF_PEER" nodad
ip -n "$NS_PEER" link set "$IF_PEER" up
ip -n "$NS_STK" link set "$IF_STK" up

in_peer() { ip netns exec "$NS_PEER" "$@"; }
in_stk() { ip netns exec "$NS_STK" "$@"; }

stack_addrs_kernel() {
  in_stk sysctl -qw "net.ipv6.conf.$IF_STK.disable_ipv6=0"
  ip -n "$NS_STK" addr add "$STK4/24" dev "$IF_STK"
  ip -n "$NS_STK" addr add "$STK6/64" dev "$IF_STK" nodad
}

stack_addrs_none() {
  ip -n "$NS_STK" addr flush dev "$IF_STK"
  in_stk sysctl -qw "net.ipv6.conf.$IF_STK.disable_ipv6=1"
  ip -n "$NS_PEER" neigh flush dev "$IF_PEER"
}

targets() {
  echo "$STK4:$PORT"
  if [[ "$V6" == 1 ]]; then echo "[$STK6]:$PORT"; fi
}

# Waits (at most 5 s) until every target echoes; each probe is a 0.2 s load run.
wait_ready() {
  local t deadline=$((SECONDS + 5))
  for t in $(targets); do
    until in_peer timeout 3 "$LOAD_BIN" --target "$t" --size "$SIZE" --window 1 \
        --warmup 0 --duration 0.2 --timeout-ms 100 >/dev/null 2>&1; do
      if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "server exited before answering on $t" >&2; return 1
      fi
      if ((SECONDS >= deadline)); then
        echo "no echo from $t within 5 s" >&2; return 1
      fi
      sleep 0.1
    done
  done
}

# run_load SERVER ROUND: one load run per target, JSON appended to $OUT.
run_load() {
  local server=$1 round=$2 t line
  local limit=$((${DURATION%.*} + 30))
  for t in $(targets); do
    line=$(in_peer timeout "$limit" "$LOAD_BIN" --target "$t" --size "$SIZE" --window "$WINDOW" \
      --duration "$DURATION" --sockets "$SOCKETS") || true
    if [[ "$line" != "{"*"}" ]]; then
      echo "load run against $t ($server) produced no result" >&2; return 1
    fi
    line="${line%\}},\"server\":\"$server\",\"round\":$round,\"nproc\":$NPROC}"
    echo "$line" | tee -a "$OUT"
  done
}

serve_kernel() {
  local server=$1 round=$2
  stack_addrs_kernel
  # Not through in_stk: a backgrounded function is a subshell and $! would be its PID, not the
  # server's (ip netns exec execs the command, so $! is the server itself).
  ip netns exec "$NS_STK" "$KERNEL_BIN" --bind "$STK4:$PORT" --bind "[$STK6]:$PORT" &
  SERVER_PID=$!
  wait_ready
  run_load "$server" "$round"
  stop_server
  stack_addrs_none
}

serve_netstack() {
  local round=$1
  stack_addrs_none
  # shellcheck disable=SC2086 # ECHO_ARGS is a list of extra words
  ip netns exec "$NS_STK" "$ECHO_BIN" --iface "$IF_STK" --ipv4 "$STK4/24" --ipv6 "$STK6/64" \
    --echo-port "$PORT" --abort-port "$ABORT_PORT" $ECHO_ARGS &
  SERVER_PID=$!
  wait_ready
  run_load netstack "$round"
  stop_server
}

echo "netstack UDP echo: size $SIZE window $WINDOW duration ${DURATION}s sockets $SOCKETS repeats $REPEATS v6 $V6 nproc $NPROC -> $OUT" >&2
serve_other() {
  if [[ "$NETSTACK_STANDIN" == 1 ]]; then
    serve_kernel kernel-standin "$1"
  elif [[ "$KERNEL_ONLY" != 1 ]]; then
    serve_netstack "$1"
  fi
}
# Interleaved; the order alternates between rounds so a drift doesn't favour one side.
for round in $(seq "$REPEATS"); do
  if ((round % 2)); then
    serve_kernel kernel "$round"; serve_other "$round"
  else
    serve_other "$round"; serve_kernel kernel "$round"
  fi
done

# --- table of medians ------------------------------------------------------------------------
python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def fam(t): return "v6" if t.startswith("[") else "v4"
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
groups = {}
for r in rows:
    groups.setdefault((fam(r["target"]), r["server"]), []).append(r)
print(f"\n{'family':6} {'server':15} {'runs':>4} {'pps':>10} {'ratio':>6} {'Mbit/s':>8} {'p50_us':>7} {'p99_us':>7} {'lost':>6}")
for (f, s), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "kernel", kv[0][1])):
    pps = med([r["pps"] for r in rs])
    ref = med([r["pps"] for r in groups.get((f, "kernel"), [])])
    ratio = f"{pps / ref:.2f}" if ref and pps is not None else "-"
    mb = med([r["mbps"] for r in rs])
    p50 = med([r["p50_us"] for r in rs]); p99 = med([r["p99_us"] for r in rs])
    lost = sum(r["lost"] for r in rs)
    fmt = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"
    print(f"{f:6} {s:15} {len(rs):>4} {fmt(pps):>10} {ratio:>6} {fmt(mb,1):>8} {fmt(p50):>7} {fmt(p99):>7} {lost:>6}")
print("(medians over rounds; ratio = median pps / kernel median pps, same family; lost = sum)")
EOF
echo "results: $OUT" >&2
