#!/usr/bin/env bash
# Memory per idle TCP connection in afpacket mode (issue 8): sipedge's RSS growth over N idle
# established connections on its userspace TCP, each of which delivered one SIP message.
#
# usage (as root, from anywhere in the repo):
#   bench/idle_conns_afpacket.sh
#   COUNTS="10000 100000" ROUNDS=2 BINS="base:/tmp/sipedge-base new:target/release/sipedge" bench/idle_conns_afpacket.sh
#   SKIP_BUILD=1 COUNTS=1000 ROUNDS=1 bench/idle_conns_afpacket.sh     # quick check of the harness
#
# Layout (made afresh for every run, removed on exit):
#   netns "ica-peer-PID": the clients (Linux TCP, examples/idle_conns); veth 198.18.202.1/24 plus
#                         SOURCES client addresses 198.18.202.11.. ; ip_local_port_range 1024 65000
#   netns "ica-stk-PID":  sipedge --stack afpacket on the other end of the veth, which has no kernel
#                         address (disable_ipv6=1); the stack owns 198.18.202.2/24 and listens on
#                         udp+tcp 198.18.202.2:5060; /metrics on 127.0.0.1:MPORT in that namespace.
# Kernel mode cannot hold 100,000 here (one descriptor per connection, hard RLIMIT_NOFILE 20,000,
# no CAP_SYS_RESOURCE); afpacket mode needs no descriptor per connection on sipedge's side. The
# client side is split over processes of at most PER_CLIENT connections each.
#
# Per run: start sipedge with a config raising [tcp] max_connections / max_connections_per_ip and
# [stack.limits] tcp_max_conns above N and the idle / first-message lifetimes above the run's
# length; warm up (WARMUP connections that each deliver one OPTIONS and close, so that the stack
# thread's read buffer and scratch are counted before, not per connection; then wait for their
# TIME_WAIT / FIN_WAIT state to go: the stack's tcp_time_wait_secs is set to TW_SECS); read
# VmRSS ("before"); the clients open N connections, each sends one OPTIONS addressed to the
# proxy (answered 200 locally, no upstream involved), reads the reply and holds the connection
# open; wait SETTLE seconds; read VmRSS ("after"); per connection = (after - before) / N. The
# proxy's open-connection gauges (sipedge_tcp_connections, sipedge_netstack_tcp_curr_estab) are
# recorded to check that all N were held.
#
# env: COUNTS ("10000 100000") ROUNDS (1) SOURCES (16) SETTLE (3) PER_CLIENT (15000) WARMUP (200)
#      TW_SECS (2) BINS ("new:target/release/sipedge") CLIENT (target/release/examples/idle_conns)
#      SKIP_BUILD=1 (no cargo build --release)
# output: one JSON line per run, appended to bench/results/idle-conns-afpacket-YYYYmmdd-HHMMSS.jsonl,
#         then a table.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,35p' "$0"; exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "idle_conns_afpacket.sh: must run as root (network namespaces, AF_PACKET)" >&2; exit 1
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COUNTS=${COUNTS:-"10000 100000"}
ROUNDS=${ROUNDS:-1}
SOURCES=${SOURCES:-16}
SETTLE=${SETTLE:-3}
WARMUP=${WARMUP:-200}
TW_SECS=${TW_SECS:-2}
PER_CLIENT=${PER_CLIENT:-15000}
BINS=${BINS:-"new:target/release/sipedge"}
CLIENT=${CLIENT:-target/release/examples/idle_conns}

SUB=202
PEER4=198.18.$SUB.1
STK4=198.18.$SUB.2
PORT=5060
MPORT=25091
NS_PEER="ica-peer-$$"
NS_STK="ica-stk-$$"
IF_PEER="vap$$"
IF_STK="vas$$"
NOFILE=19500
BINDS=$(seq -s, -f "198.18.$SUB.%g" 11 $((10 + SOURCES)))

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --bin sipedge --example idle_conns
fi
[[ -x "$CLIENT" ]] || { echo "missing $CLIENT (cargo build --release --example idle_conns)" >&2; exit 1; }
CLIENT=$(realpath "$CLIENT")

max=0
for n in $COUNTS; do ((n > max)) && max=$n; done

mkdir -p bench/results
OUT="bench/results/idle-conns-afpacket-$(date -u +%Y%m%d-%H%M%S).jsonl"
TMP=$(mktemp -d /tmp/idle-conns-afpacket.XXXXXX)
PROXY_PID="" CLIENT_PIDS=""

# Stops a process this script started: SIGTERM, at most 5 s, then SIGKILL.
stop_pid() {
  local pid=$1
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

teardown() {
  local p
  for p in $CLIENT_PIDS; do stop_pid "$p"; done; CLIENT_PIDS=""
  stop_pid "$PROXY_PID"; PROXY_PID=""
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

setup() {
  local a
  ip netns add "$NS_PEER"
  ip netns add "$NS_STK"
  ip link add "$IF_PEER" netns "$NS_PEER" type veth peer name "$IF_STK" netns "$NS_STK"
  ip -n "$NS_PEER" link set lo up
  ip -n "$NS_STK" link set lo up
  ip -n "$NS_PEER" addr add "$PEER4/24" dev "$IF_PEER"
  for a in ${BINDS//,/ }; do ip -n "$NS_PEER" addr add "$a/24" dev "$IF_PEER"; done
  ip netns exec "$NS_PEER" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
  ip -n "$NS_PEER" link set "$IF_PEER" up
  ip netns exec "$NS_STK" sysctl -qw "net.ipv6.conf.$IF_STK.disable_ipv6=1"
  ip -n "$NS_STK" link set "$IF_STK" up
}

cat >"$TMP/sipedge.toml" <<EOF
[proxy]
listen = ["udp:$STK4:$PORT", "tcp:$STK4:$PORT"]
upstreams = ["sip:$PEER4:9"]
drain_timeout_secs = 0
[tcp]
max_connections = $((max + 1000))
max_connections_per_ip = $((max + 1000))
idle_lifetime_secs = 3600
first_message_timeout_secs = 600
[metrics]
listen = "127.0.0.1:$MPORT"
[log]
level = "warn"
[stack]
mode = "afpacket"
interface = "$IF_STK"
ipv4 = "$STK4/24"
[stack.limits]
tcp_max_conns = $((max + 1000))
tcp_syn_backlog_max = 4096
tcp_max_tw_buckets = $((max + 1000))
tcp_time_wait_secs = $TW_SECS
tcp_fin_timeout_secs = $TW_SECS
EOF

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# metric NAME: the first sample of NAME on /metrics (bash /dev/tcp inside the stack namespace)
metric() {
  ip netns exec "$NS_STK" bash -c '
    exec 9<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n" >&9
    awk -v m="$2" '\''$1 == m {print $2; exit}'\'' <&9' _ "$MPORT" "$1"
}
in_peer() { ip netns exec "$NS_PEER" prlimit --nofile=$NOFILE:$NOFILE "$@"; }

for round in $(seq 1 "$ROUNDS"); do
  for n in $COUNTS; do
    procs=$(((n + PER_CLIENT - 1) / PER_CLIENT))
    for spec in $BINS; do
      label=${spec%%:*} bin=${spec#*:}
      setup
      ip netns exec "$NS_STK" "$bin" --config "$TMP/sipedge.toml" </dev/null >"$TMP/proxy.log" 2>&1 &
      PROXY_PID=$!
      for _ in $(seq 1 150); do
        metric sipedge_tcp_connections >/dev/null 2>&1 && break
        kill -0 "$PROXY_PID" 2>/dev/null || { echo "sipedge exited:" >&2; cat "$TMP/proxy.log" >&2; exit 1; }
        sleep 0.1
      done
      # warm-up (bounded: 10 tries for the first contact, neighbour resolution included)
      for _ in $(seq 10); do
        in_peer "$CLIENT" --target "$STK4:$PORT" --count "$WARMUP" --bind "$BINDS" --hold-secs 0 \
          >/dev/null 2>"$TMP/warmup.err" && break
        sleep 0.5
      done
      sleep $((TW_SECS + 2))
      before=$(rss_kb "$PROXY_PID")
      rm -f "$TMP"/client.*
      for p in $(seq 1 "$procs"); do
        share=$((n / procs + (p <= n % procs ? 1 : 0)))
        in_peer "$CLIENT" --target "$STK4:$PORT" --count "$share" --bind "$BINDS" --hold-secs 1800 \
          >"$TMP/client.$p.out" 2>"$TMP/client.$p.err" &
        CLIENT_PIDS="$CLIENT_PIDS $!"
      done
      t0=$SECONDS
      for _ in $(seq 1 6000); do # at most 600 s
        done_n=$(cat "$TMP"/client.*.out 2>/dev/null | grep -c count || true)
        ((done_n >= procs)) && break
        sleep 0.1
      done
      open_s=$((SECONDS - t0))
      sleep "$SETTLE"
      after=$(rss_kb "$PROXY_PID")
      open=$(metric sipedge_tcp_connections || echo null)
      estab=$(metric sipedge_netstack_tcp_curr_estab || echo null)
      ok=$(cat "$TMP"/client.*.out | sed -nE 's/.*"ok":([0-9]+).*/\1/p' | awk '{s+=$1} END {print s+0}')
      failed=$(cat "$TMP"/client.*.out | sed -nE 's/.*"failed":([0-9]+).*/\1/p' | awk '{s+=$1} END {print s+0}')
      per=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
      line="{\"mode\":\"afpacket\",\"binary\":\"$label\",\"round\":$round,\"n\":$n,\"sources\":$SOURCES,\"rss_before_kb\":$before,\"rss_after_kb\":$after,\"bytes_per_conn\":$per,\"proxy_open\":${open:-null},\"stack_estab\":${estab:-null},\"open_secs\":$open_s,\"client\":{\"procs\":$procs,\"ok\":$ok,\"failed\":$failed}}"
      echo "$line" | tee -a "$OUT"
      if ((failed > 0)); then head -5 "$TMP"/client.*.err >&2 || true; fi
      teardown
      sleep 1
    done
  done
done

echo
echo "results: $OUT"
printf '%-10s %8s %12s %12s %14s %10s %10s\n' binary N rss_before rss_after bytes/conn open estab
sed -E 's/.*"binary":"([^"]*)".*"n":([0-9]+).*"rss_before_kb":([0-9]+),"rss_after_kb":([0-9]+),"bytes_per_conn":([0-9-]+),"proxy_open":([^,]*),"stack_estab":([^,]*),.*/\1 \2 \3 \4 \5 \6 \7/' "$OUT" |
  while read -r b n rb ra per open estab; do
    printf '%-10s %8s %10s kB %9s kB %12s B %10s %10s\n' "$b" "$n" "$rb" "$ra" "$per" "$open" "$estab"
  done
