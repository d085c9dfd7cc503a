#!/usr/bin/env bash
# TCP over a veth pair: the embedded stack (netstack_echo on AF_PACKET) against Linux TCP (tcp_peer serve,
# the same protocol on kernel sockets, one tokio thread) as the server, interleaved in one run.
#
# usage (as root, from anywhere in the repo):
#   sudo bench/netstack_tcp.sh
#   BULK_MIB=256 DURATION=5 CONNS="10000 100000" REPEATS=2 bench/netstack_tcp.sh
#   SKIP_BUILD=1 SERVERS=linux REPEATS=1 CONNS=10000 bench/netstack_tcp.sh     # one side only
#   PERF=1 bench/netstack_tcp.sh          # also perf-record the netstack server during bulk and rate
#
# Layout (made afresh for every server and round, so no TIME_WAIT or neighbour state carries over):
#   netns "nst-peer-PID": the client, tcp_peer; veth 198.18.201.1/24 + 198.18.201.11-42/24 (32 client
#                         addresses), 2001:db8:201::1/64; ip_local_port_range 1024 65000
#   netns "nst-stk-PID":  the server on 198.18.201.2 / 2001:db8:201::2
#     linux:    the addresses on the veth, tcp_peer serve --echo/--sink/--source (somaxconn 65535)
#     netstack: no kernel address, disable_ipv6=1, netstack_echo --sink-port/--source-port
# Measured per server and round (every figure from the client, tcp_peer, except CPU and memory):
#   bulk-send / bulk-recv  one connection, BULK_MIB each way (sink hash / every byte checked), Mbit/s
#   rate                   connect + 100-byte request + echo + close, PARALLEL at once, DURATION s:
#                          connections/s; server process CPU and whole-box CPU (both cores, incl.
#                          softirq) per connection
#   hold-N                 N idle established connections (each did a 1-byte echo: empty buffers):
#                          server RSS growth / N, and /proc/meminfo Slab growth / N (the kernel's
#                          socket memory: client side only for netstack, client + server for linux;
#                          the table reports linux's server share as the difference of the two)
# env: BULK_MIB (256) DURATION (5) PARALLEL (16) CONNS ("10000 100000") REPEATS (1)
#      SERVERS ("linux netstack") PERF (0) SKIP_BUILD=1 BIN_DIR (target/release/examples)
#      SERVER_NICE (unset; e.g. -10: renice every server process, for a box shared with other load)
# output: JSON lines in bench/results/netstack-tcp-YYYYmmdd-HHMMSS.jsonl, then a table of medians.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,30p' "$0"; exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "netstack_tcp.sh: must run as root (network namespaces)" >&2; exit 1
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BULK_MIB=${BULK_MIB:-256}
DURATION=${DURATION:-5}
PARALLEL=${PARALLEL:-16}
CONNS=${CONNS:-"10000 100000"}
REPEATS=${REPEATS:-1}
SERVERS=${SERVERS:-"linux netstack"}
PERF=${PERF:-0}
SERVER_NICE=${SERVER_NICE:-}
BIN_DIR=${BIN_DIR:-target/release/examples}
ECHO_BIN=$BIN_DIR/netstack_echo
PEER_BIN=$BIN_DIR/tcp_peer

SUB=201
PEER4=198.18.$SUB.1
STK4=198.18.$SUB.2
PEER6=2001:db8:$SUB::1
STK6=2001:db8:$SUB::2
ECHO=5060; SINK=5062; SOURCE=5063
NS_PEER="nst-peer-$$"
NS_STK="nst-stk-$$"
IF_PEER="vtp$$"
IF_STK="vts$$"
NPROC=$(nproc)
# Open files per process: this VM's hard limit is 20000 and CAP_SYS_RESOURCE is not ours, so the
# Linux server runs as several processes sharing the ports (SO_REUSEPORT) and hold-N as several clients.
NOFILE=19500
PER_PROC=15000
BINDS=$(seq -s, -f "198.18.$SUB.%g" 11 42)

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --example netstack_echo --example tcp_peer
fi
for b in "$ECHO_BIN" "$PEER_BIN"; do
  [[ -x "$b" ]] || { echo "missing $b (cargo build --release --examples)" >&2; exit 1; }
done
ECHO_BIN=$(realpath "$ECHO_BIN"); PEER_BIN=$(realpath "$PEER_BIN")

mkdir -p bench/results
STAMP=$(date +%Y%m%d-%H%M%S)
OUT="bench/results/netstack-tcp-$STAMP.jsonl"
TMP=$(mktemp -d)
SERVER_PID=""          # the netstack server, or the first Linux server process
SERVER_PIDS=""         # every server process
HOLD_PIDS=""

# Stops a process this script started: SIGTERM, at most 5 s, then SIGKILL.
stop_pid() {
  local pid=$1
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "process $pid ignored SIGTERM for 5 s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

teardown() {
  local p
  for p in $HOLD_PIDS; do stop_pid "$p"; done; HOLD_PIDS=""
  for p in $SERVER_PIDS; do stop_pid "$p"; done; SERVER_PIDS=""; SERVER_PID=""
  ip netns del "$NS_PEER" 2>/dev/null || true
  ip netns del "$NS_STK" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  teardown
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_peer() { ip netns exec "$NS_PEER" prlimit --nofile=$NOFILE:$NOFILE "$@"; }

setup() {
  local server=$1 a
  ip netns add "$NS_PEER"
  ip netns add "$NS_STK"
  ip link add "$IF_PEER" netns "$NS_PEER" type veth peer name "$IF_STK" netns "$NS_STK"
  ip -n "$NS_PEER" link set lo up
  ip -n "$NS_STK" link set lo up
  ip netns exec "$NS_PEER" sysctl -qw "net.ipv6.conf.$IF_PEER.accept_dad=0"
  ip -n "$NS_PEER" addr add "$PEER4/24" dev "$IF_PEER"
  for a in ${BINDS//,/ }; do ip -n "$NS_PEER" addr add "$a/24" dev "$IF_PEER"; done
  ip -n "$NS_PEER" addr add "$PEER6/64" dev "$IF_PEER" nodad
  ip netns exec "$NS_PEER" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
  ip -n "$NS_PEER" link set "$IF_PEER" up
  if [[ "$server" == linux ]]; then
    ip -n "$NS_STK" addr add "$STK4/24" dev "$IF_STK"
    ip -n "$NS_STK" addr add "$STK6/64" dev "$IF_STK" nodad
    ip netns exec "$NS_STK" sysctl -qw net.core.somaxconn=65535
    ip netns exec "$NS_STK" sysctl -qw net.ipv4.tcp_max_syn_backlog=65535
  else
    ip netns exec "$NS_STK" sysctl -qw "net.ipv6.conf.$IF_STK.disable_ipv6=1"
  fi
  ip -n "$NS_STK" link set "$IF_STK" up
}

# start_server linux|netstack: SERVER_PIDS are the servers themselves (ip netns exec / prlimit exec).
start_server() {
  local server=$1 log=$TMP/server.log max=0 n k procs
  if [[ "$server" == linux ]]; then
    for n in $CONNS; do ((n > max)) && max=$n; done
    procs=$(((max + PER_PROC - 1) / PER_PROC + 1))
    for k in $(seq "$procs"); do
      ip netns exec "$NS_STK" prlimit --nofile=$NOFILE:$NOFILE "$PEER_BIN" --timeout-secs 3600 serve \
        --reuseport --echo "$STK4:$ECHO" --echo "[$STK6]:$ECHO" --sink "$STK4:$SINK" \
        --source "$STK4:$SOURCE" 2>"$TMP/server-$k.log" &
      SERVER_PID=$!
      SERVER_PIDS="$SERVER_PIDS $!"
      wait_line "$TMP/server-$k.log" "tcp_peer serving" 10
    done
  else
    RUST_LOG=info ip netns exec "$NS_STK" "$ECHO_BIN" --iface "$IF_STK" --ipv4 "$STK4/24" \
      --ipv6 "$STK6/64" --sink-port "$SINK" --source-port "$SOURCE" --tcp-max-conns 250000 \
      --stats-interval 3600 2>"$log" &
    SERVER_PID=$!
    SERVER_PIDS=$!
    wait_line "$log" "netstack_echo ready" 10
  fi
  if [[ -n "$SERVER_NICE" ]]; then
    local p
    for p in $SERVER_PIDS; do renice -n "$SERVER_NICE" -p "$p" >/dev/null; done
  fi
  # First contact: neighbour resolution and a working echo (≤ 10 tries).
  local i
  for i in $(seq 10); do
    in_peer "$PEER_BIN" --timeout-secs 5 echo --target "$STK4:$ECHO" --bytes 1000 >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "no TCP echo from the $server server" >&2; cat "$log" >&2; return 1
}

# wait_line FILE TEXT SECS
wait_line() {
  local i
  for i in $(seq $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:" >&2; cat "$1" >&2; return 1; }
    sleep 0.1
  done
  echo "no '$2' within $3 s" >&2; cat "$1" >&2; return 1
}

# utime + stime, and VmRSS, summed over the server processes
cpu_ticks() { local p t=0; for p in $SERVER_PIDS; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
box_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }          # user nice system irq softirq
rss_kib() { local p t=0; for p in $SERVER_PIDS; do t=$((t + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status"))); done; echo $t; }
slab_kib() { awk '/^Slab:/{print $2}' /proc/meminfo; }
TICK=$(getconf CLK_TCK)

# emit SERVER ROUND JSON-FROM-TCP_PEER EXTRA-FIELDS
emit() {
  local line=$3
  if [[ "$line" != "{"*"}" ]]; then
    echo "no result from tcp_peer ($1): $line" >&2; line='{"ok":false}'
  fi
  line="${line%\}},\"server\":\"$1\",\"round\":$2,\"nproc\":$NPROC${4:+,$4}}"
  echo "$line" | tee -a "$OUT"
}

perf_start() {
  [[ "$PERF" == 1 && "$1" == netstack ]] || return 0
  perf record -g -o "bench/results/perf-netstack-tcp-$STAMP-$2.data" -p "$SERVER_PID" \
    >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.3
}
perf_stop() {
  [[ -n "${PERF_PID:-}" ]] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
}

run_server() {
  local server=$1 round=$2 bytes=$((BULK_MIB * 1048576)) line c0 b0 c1 b1 conns n
  setup "$server"
  start_server "$server"

  perf_start "$server" bulk
  line=$(in_peer "$PEER_BIN" --timeout-secs 300 send --target "$STK4:$SINK" --bytes "$bytes") || true
  emit "$server" "$round" "$line" '"test":"bulk-send"'
  line=$(in_peer "$PEER_BIN" --timeout-secs 300 recv --target "$STK4:$SOURCE" --bytes "$bytes") || true
  emit "$server" "$round" "$line" '"test":"bulk-recv"'
  perf_stop

  perf_start "$server" rate
  c0=$(cpu_ticks); b0=$(box_busy)
  line=$(in_peer "$PEER_BIN" --timeout-secs $((DURATION + 60)) rate --target "$STK4:$ECHO" \
    --secs "$DURATION" --parallel "$PARALLEL" --bind "$BINDS") || true
  c1=$(cpu_ticks); b1=$(box_busy)
  perf_stop
  conns=$(sed -n 's/.*"conns":\([0-9]*\).*/\1/p' <<<"$line"); conns=${conns:-0}
  emit "$server" "$round" "$line" "\"test\":\"rate\",\"server_cpu_us_per_conn\":$(awk -v d=$((c1 - c0)) -v n="$conns" -v t="$TICK" 'BEGIN{print (n>0)? d*1e6/t/n : "null"}'),\"box_cpu_us_per_conn\":$(awk -v d=$((b1 - b0)) -v n="$conns" -v t="$TICK" 'BEGIN{print (n>0)? d*1e6/t/n : "null"}')"

  for n in $CONNS; do
    local rel=$TMP/release-$n r0 s0 r1 s1 i k procs per held est clean fails
    rm -f "$rel" "$TMP"/hold-"$n"-*
    procs=$(((n + PER_PROC - 1) / PER_PROC)); per=$((n / procs))
    sync; sleep 1
    r0=$(rss_kib); s0=$(slab_kib)
    for k in $(seq "$procs"); do
      in_peer "$PEER_BIN" --timeout-secs 900 hold --target "$STK4:$ECHO" --conns "$per" --bind "$BINDS" \
        --parallel 256 --release-file "$rel" --max-hold-secs 600 >"$TMP/hold-$n-$k.json" \
        2>"$TMP/hold-$n-$k.log" &
      HOLD_PIDS="$HOLD_PIDS $!"
    done
    for i in $(seq 6000); do
      held=$(cat "$TMP"/hold-"$n"-*.log 2>/dev/null | grep -c "tcp_peer holding" || true)
      ((held >= procs)) && break
      sleep 0.1
    done
    sleep 2
    r1=$(rss_kib); s1=$(slab_kib)
    touch "$rel"
    for k in $HOLD_PIDS; do wait "$k" || true; done
    HOLD_PIDS=""
    est=0; clean=0; fails=0
    for k in $(seq "$procs"); do
      line=$(tail -n1 "$TMP/hold-$n-$k.json")
      est=$((est + $(sed -n 's/.*"established":\([0-9]*\).*/\1/p' <<<"$line" | grep . || echo 0)))
      clean=$((clean + $(sed -n 's/.*"closed_clean":\([0-9]*\).*/\1/p' <<<"$line" | grep . || echo 0)))
      [[ "$line" == *'"ok":true'* ]] || { fails=$((fails + 1)); echo "hold client $k: $line" >&2; }
    done
    local ok=false; ((fails == 0 && est == per * procs)) && ok=true
    emit "$server" "$round" "{\"mode\":\"hold\",\"ok\":$ok,\"conns\":$((per * procs)),\"established\":$est,\"closed_clean\":$clean,\"clients\":$procs}" \
      "\"test\":\"hold-$n\",\"rss_kib_before\":$r0,\"rss_kib_held\":$r1,\"slab_kib_before\":$s0,\"slab_kib_held\":$s1,\"rss_bytes_per_conn\":$(((r1 - r0) * 1024 / (est > 0 ? est : 1))),\"slab_bytes_per_conn\":$(((s1 - s0) * 1024 / (est > 0 ? est : 1)))"
  done

  for p in $SERVER_PIDS; do stop_pid "$p"; done; SERVER_PIDS=""; SERVER_PID=""
  if [[ "$server" == netstack ]]; then
    grep -E "counters at exit|tcp stats at exit" "$TMP/server.log" | sed 's/^/  netstack: /' >&2 || true
  fi
  teardown
}

echo "netstack TCP: bulk ${BULK_MIB} MiB, rate ${DURATION}s x $PARALLEL, hold $CONNS, repeats $REPEATS, nproc $NPROC -> $OUT" >&2
for round in $(seq "$REPEATS"); do
  order=$SERVERS
  if ((round % 2 == 0)); then order=$(tr ' ' '\n' <<<"$SERVERS" | tac | tr '\n' ' '); fi
  for s in $order; do run_server "$s" "$round"; done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None
def get(server, test, key):
    return med([r.get(key) for r in rows if r.get("server") == server and r.get("test") == test and r.get("ok")])
def fmt(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
tests = sorted({r["test"] for r in rows if "test" in r}, key=lambda t: (t.startswith("hold"), len(t), t))
print(f"\n{'test':14} {'figure':28} {'linux':>10} {'netstack':>10} {'netstack/linux':>15}")
for t in tests:
    if t.startswith("bulk"):
        figs = [("Mbit/s", "mbps")]
    elif t == "rate":
        figs = [("connections/s", "cps"), ("p99 us", "p99_us"),
                ("server CPU us/conn", "server_cpu_us_per_conn"), ("box CPU us/conn", "box_cpu_us_per_conn")]
    else:
        figs = [("server RSS B/conn", "rss_bytes_per_conn"), ("kernel slab B/conn", "slab_bytes_per_conn")]
    for name, key in figs:
        l, n = get("linux", t, key), get("netstack", t, key)
        print(f"{t:14} {name:28} {fmt(l):>10} {fmt(n):>10} {ratio(n, l):>15}")
    if t.startswith("hold"):
        ls, ns = get("linux", t, "slab_bytes_per_conn"), get("netstack", t, "slab_bytes_per_conn")
        lr, nr = get("linux", t, "rss_bytes_per_conn"), get("netstack", t, "rss_bytes_per_conn")
        if None not in (ls, ns, lr, nr):
            lin = ls - ns + lr
            print(f"{t:14} {'server total B/conn':28} {fmt(lin):>10} {fmt(nr):>10} {ratio(nr, lin):>15}")
bad = [r for r in rows if not r.get("ok")]
if bad:
    print(f"\n{len(bad)} failed run(s):")
    for r in bad: print("  ", json.dumps(r))
print("(medians over rounds of ok runs; linux 'server total' = its slab growth minus the client-only slab"
      " growth measured with netstack, plus its RSS growth)")
EOF
echo "results: $OUT" >&2
