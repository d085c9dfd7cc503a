#!/usr/bin/env bash
# Memory per idle TCP connection in kernel mode (issue 8): sipedge's RSS growth
# over N idle established connections, each of which delivered one SIP message.
#
# usage (from anywhere in the repo; needs `ulimit -Hn` above N + 1000 for sipedge; the
# client side is split over processes of at most PER_CLIENT connections each):
#   bench/idle_conns.sh
#   COUNTS="10000 100000" ROUNDS=2 BINS="base:/tmp/sipedge-base new:target/release/sipedge" bench/idle_conns.sh
#   SKIP_BUILD=1 COUNTS=1000 ROUNDS=1 bench/idle_conns.sh        # quick check of the harness
#
# Each round, for each binary of BINS (label:path) and each N of COUNTS: start sipedge
# (release build) with a config that listens on 127.0.0.1:PORT (UDP+TCP), raises
# [tcp] max_connections / max_connections_per_ip above N and the idle / first-message
# lifetimes above the run's length; read VmRSS from /proc/PID/status ("before"); run
# examples/idle_conns, which opens N connections from SOURCES loopback addresses
# (127.0.0.2 ...; bind before connect), sends one OPTIONS addressed to the proxy on each
# (answered 200 locally, no upstream involved), reads the reply and holds them all
# open (after a warm-up, see WARMUP); wait SETTLE seconds, read VmRSS again ("after"); per connection =
# (after - before) / N. The proxy's own count of open connections (/metrics
# sipedge_tcp_connections) is recorded to check that all N were held.
#
# env: COUNTS ("10000 100000") ROUNDS (1) SOURCES (16) PORT (25060) SETTLE (2) PER_CLIENT (15000)
#      WARMUP (200: connections opened, used once and closed before "before", so that the
#      per-worker read buffers and scratch are not counted per connection)
#      BINS ("new:target/release/sipedge") CLIENT (target/release/examples/idle_conns)
#      SKIP_BUILD=1 (no cargo build --release)
# output: one JSON line per run, appended to bench/results/idle-conns-YYYYmmdd-HHMMSS.jsonl,
#         then a table.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,26p' "$0"; exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COUNTS=${COUNTS:-"10000 100000"}
ROUNDS=${ROUNDS:-1}
SOURCES=${SOURCES:-16}
PORT=${PORT:-25060}
MPORT=$((PORT + 1))
SETTLE=${SETTLE:-2}
WARMUP=${WARMUP:-200}
BINS=${BINS:-"new:target/release/sipedge"}
CLIENT=${CLIENT:-target/release/examples/idle_conns}

PER_CLIENT=${PER_CLIENT:-15000}
max=0
for n in $COUNTS; do (( n > max )) && max=$n; done
want=$((max + 1000))
if (( $(ulimit -Hn) < want )); then
  ulimit -Hn "$want" 2>/dev/null || true
fi
hard=$(ulimit -Hn)
ulimit -Sn "$hard"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --bin sipedge --example idle_conns
fi

mkdir -p bench/results
OUT="bench/results/idle-conns-$(date -u +%Y%m%d-%H%M%S).jsonl"
TMP=$(mktemp -d /tmp/idle-conns.XXXXXX)
PROXY_PID="" CLIENT_PID=""
cleanup() {
  for c in $CLIENT_PID; do kill "$c" 2>/dev/null; wait "$c" 2>/dev/null; done
  [[ -n "$PROXY_PID" ]] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/sipedge.toml" <<EOF
[proxy]
listen = ["udp:127.0.0.1:$PORT", "tcp:127.0.0.1:$PORT"]
upstreams = ["sip:127.0.0.1:9"]
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
EOF

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
metric() {
  # first sample of metric $1 on /metrics (bash /dev/tcp, no curl needed)
  exec 9<>"/dev/tcp/127.0.0.1/$MPORT" || return 1
  printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&9
  awk -v m="$1" '$1 == m {print $2; exit}' <&9
  exec 9>&-
}

for round in $(seq 1 "$ROUNDS"); do
  for n in $COUNTS; do
    if (( n + 1000 > hard )); then
      echo "idle_conns.sh: N=$n skipped: ulimit -Hn is $hard (sipedge needs N + 1000 descriptors)" >&2
      continue
    fi
    procs=$(( (n + PER_CLIENT - 1) / PER_CLIENT ))
    for spec in $BINS; do
      label=${spec%%:*} bin=${spec#*:}
      "$bin" --config "$TMP/sipedge.toml" > "$TMP/proxy.log" 2>&1 &
      PROXY_PID=$!
      for _ in $(seq 1 100); do
        metric sipedge_tcp_connections > /dev/null 2>&1 && break
        sleep 0.1
      done
      # warm-up: WARMUP connections that each deliver a message, then close, so
      # per-worker buffers (read buffer, scratch) are counted before, not per connection
      if (( WARMUP > 0 )); then
        "$CLIENT" --target "127.0.0.1:$PORT" --count "$WARMUP" --sources "$SOURCES" --hold-secs 0 \
          > /dev/null 2>&1 || true
      fi
      sleep 1
      before=$(rss_kb "$PROXY_PID")
      CLIENT_PID=""
      rm -f "$TMP"/client.*
      for p in $(seq 1 "$procs"); do
        share=$(( n / procs + (p <= n % procs ? 1 : 0) ))
        "$CLIENT" --target "127.0.0.1:$PORT" --count "$share" --sources "$SOURCES" --hold-secs 900 \
          > "$TMP/client.$p.out" 2> "$TMP/client.$p.err" &
        CLIENT_PID="$CLIENT_PID $!"
      done
      for _ in $(seq 1 3000); do   # at most 300 s
        done_n=$(cat "$TMP"/client.*.out 2>/dev/null | grep -c count || true)
        (( done_n >= procs )) && break
        sleep 0.1
      done
      sleep "$SETTLE"
      after=$(rss_kb "$PROXY_PID")
      open=$(metric sipedge_tcp_connections || echo null)
      ok=$(cat "$TMP"/client.*.out | sed -nE 's/.*"ok":([0-9]+).*/\1/p' | awk '{s+=$1} END {print s+0}')
      failed=$(cat "$TMP"/client.*.out | sed -nE 's/.*"failed":([0-9]+).*/\1/p' | awk '{s+=$1} END {print s+0}')
      client="{\"procs\":$procs,\"ok\":$ok,\"failed\":$failed}"
      per=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
      line="{\"binary\":\"$label\",\"round\":$round,\"n\":$n,\"sources\":$SOURCES,\"rss_before_kb\":$before,\"rss_after_kb\":$after,\"bytes_per_conn\":$per,\"proxy_open\":${open:-null},\"client\":$client}"
      echo "$line" | tee -a "$OUT"
      for c in $CLIENT_PID; do kill "$c" 2>/dev/null || true; wait "$c" 2>/dev/null || true; done
      CLIENT_PID=""
      kill "$PROXY_PID" 2>/dev/null || true
      wait "$PROXY_PID" 2>/dev/null || true
      PROXY_PID=""
      sleep 1
    done
  done
done

echo
echo "results: $OUT"
printf '%-10s %8s %12s %12s %14s %10s\n' binary N rss_before rss_after bytes/conn open
sed -E 's/.*"binary":"([^"]*)".*"n":([0-9]+).*"rss_before_kb":([0-9]+),"rss_after_kb":([0-9]+),"bytes_per_conn":([0-9-]+),"proxy_open":([^,]*),.*/\1 \2 \3 \4 \5 \6/' "$OUT" |
  while read -r b n rb ra per open; do
    printf '%-10s %8s %10s kB %9s kB %12s B %10s\n' "$b" "$n" "$rb" "$ra" "$per" "$open"
  done
