#!/usr/bin/env bash
# SIP through the proxy across a veth pair (the namespace topology of tests/afpacket_sipp.rs):
# sipedge in afpacket mode (its own userspace stack), sipedge in kernel mode, and Kamailio 5.6
# stateless, interleaved in one run, over UDP (u1), TCP with one connection (t1) and TCP with a
# connection per call (tn): max calls/s with zero failures and proxy CPU-seconds per 1000 calls.
#
# usage (as root, from anywhere in the repo):
#   sudo bench/afpacket_sip.sh
#   RATES="2000 4000 8000" DURATION=10 REPEATS=3 bench/afpacket_sip.sh
#   SKIP_BUILD=1 RATES=500 DURATION=3 REPEATS=1 bench/afpacket_sip.sh        # smoke test
#   PROXIES="sipedge-afpacket kamailio-stateless" bench/afpacket_sip.sh        # a subset
#   TRANSPORTS=u1 bench/afpacket_sip.sh                                          # UDP only
#
# Layout: netns "nss-peer-PID" (sipp, veth 198.18.201.1/24) <-> netns "nss-stk-PID" (the proxy).
#   sipp UAS: -sn uas on 198.18.201.1:5080 (peer netns), -t u1 for u1 steps, -t t1 for t1/tn
#   sipp UAC: -sf uac.xml (../shared/bench/uac.xml, else tests/sipp/uac.xml) from
#             198.18.201.1:15090 to 198.18.201.2:5060 (peer netns), -t u1|t1|tn
#   proxies, each in the stack netns:
#   (a) sipedge-afpacket: stack-side veth without any kernel address, disable_ipv6=1; sipedge
#       with [stack] mode = "afpacket", ipv4 = 198.18.201.2/24 (one stack thread does the whole
#       path), listening on udp: (u1 steps) or udp: and tcp: (t1/tn steps) 198.18.201.2:5060;
#       ready when its log says "sipedge running on the userspace stack".
#   (b) sipedge-kernel: 198.18.201.2/24 on the stack-side veth; sipedge --listen
#       udp:198.18.201.2:5060 --listen tcp:198.18.201.2:5060 with its default workers (= CPUs).
#   (b') sipedge-kernel-before: the same with another binary, $SIPEDGE_BEFORE_BIN (e.g. a build
#       from before a change, to compare kernel mode's cost per call before and after it).
#   (a') sipedge-afpacket-before: (a) with $SIPEDGE_BEFORE_BIN (afpacket mode before a change).
#   (a'') (a) with [stack] keys set explicitly (issue 9): sipedge-afpacket-socket (workers = 1,
#       rx_ring = "off": one recvmsg per frame), sipedge-afpacket-ring (workers = 1, rx_ring = "on":
#       the TPACKET_V3 ring), sipedge-afpacket-2 (workers = 2, rx_ring = "on": two shards in a
#       PACKET_FANOUT group), sipedge-afpacket-busy (workers = 1, rx_ring = "on", busy_poll = 50 µs),
#       sipedge-afpacket-ring2ms (the ring, [stack.limits] rx_ring_timeout_ms = 2 instead of 1:
#       fewer block-timeout wake-ups, up to 1 ms more latency per hop), sipedge-afpacket-ringmac
#       (the ring with a MAC of its own, stack.mac = 02:5e:00:00:00:02: the stack-side kernel
#       sees its frames as PACKET_OTHERHOST and drops them at ip_rcv's first check; its cost shows
#       in stk_napi_cpu_s under VETH_NAPI=both), sipedge-afpacket-ringswcsum (the ring with
#       stack.tx_checksum_offload = false: the stack computes every UDP/TCP checksum itself;
#       the other variants leave them to the kernel, the default).
#       Plain sipedge-afpacket runs the defaults (workers = CPUs, ring auto).
#   (c) kamailio-stateless: ../shared/bench/kamailio-stateless.cfg with its addresses rewritten by
#       sed (listen 127.0.0.1:15060 -> 198.18.201.2:5060, forward 127.0.0.1:15080 ->
#       198.18.201.1:5080), kamailio -DD -E -m 1024 -M 16 as the harness runs it.
#   Both sipedge modes get the same [proxy] settings (the defaults: record_route = true,
#   upstream sip:198.18.201.1:5080; metrics on 127.0.0.1:9090 inside the stack netns).
#
# One step = fresh UAS + fresh proxy, then the UAC runs RATE x DURATION calls. Rounds are
# interleaved: for each round, for each transport, for each rate, every proxy once, the proxy
# order rotating between rounds. tn (as ../shared/bench/BASELINE.md explains): the UAC's side
# keeps a TIME_WAIT socket per call for 60 s, so tn steps run TN_RATES, at most TN_MAX_CALLS
# calls, and start once the peer netns holds fewer than TW_MAX TIME_WAIT sockets. Method of ../shared/bench/BASELINE.md: a step passes with 0 failed and 0 unfinished
# calls, all calls created, retransmissions (UAC+UAS) < 1 % of the calls, offered rate >= 90 % of
# the target and the proxy still alive. Proxy CPU = utime+stime from /proc/PID/stat of the proxy
# process and all its descendants (Kamailio's children; sipedge is one process, threads included),
# from just before the UAC starts to SETTLE seconds after it ends. Nothing is pinned; nproc, the CPU
# model and the kernel release are recorded in every line.
#
# env: RATES ("2000 4000 8000", u1 and t1) TN_RATES ("250 500 1000 2000") DURATION (10)
#      REPEATS (3) SETTLE (2) TRANSPORTS ("u1 t1 tn") TN_MAX_CALLS (6000) TW_MAX (1000)
#      PROXIES ("sipedge-afpacket sipedge-kernel kamailio-stateless")
#      SKIP_BUILD=1 (don't run cargo build --release)  SIPEDGE_BIN (target/release/sipedge)
#      SIPEDGE_BEFORE_BIN (the binary of the sipedge-*-before rows; needed only for them)
#      SHARED_BENCH (../shared/bench, from the repo root)  KAM_SHM_MB (1024) KAM_PKG_MB (16)
#      SIPP_BUF (4194304)  KEEP_TMP=1 (keep the per-step sipp/proxy files)
#      VETH_NAPI ("off" | "peer" | "both"; needs ethtool unless off). By default a veth runs the
#        receiving side's kernel path (IP, UDP/TCP, socket wake-up) synchronously inside the
#        sender's system call: every frame the proxy sends has sipp's receive charged to the
#        proxy's CPU, and every frame sipp sends has the proxy side's kernel receive (kernel
#        mode: IP, UDP/TCP, socket queue; afpacket: the ring copy) charged to sipp. "peer" turns
#        on GRO and threaded NAPI on sipp's end, so sipp's receive runs in its own napi/<veth>
#        kernel thread, as a NIC's receive runs on the far host. "both" does the same on the
#        proxy's end too, so the proxy host's kernel receive runs in the napi thread of the
#        proxy's veth. A veth hands a frame to NAPI only when the sending end has no TSO, so
#        TSO goes off on the other end (every SIP message here fits in one segment). Every proxy
#        gets the same topology. Each step records the CPU of both ends' napi threads,
#        "peer_napi_cpu_s" (sipp's end; not the proxy's) and "stk_napi_cpu_s" (the proxy's end:
#        its host's kernel receive, to add to the proxy's own CPU for a per-host figure).
# output: one JSON line per step, appended to bench/results/afpacket-sip-YYYYmmdd-HHMMSS.jsonl;
#         then a table per proxy, transport and rate: median CPU-s per 1000 calls, ratio to
#         Kamailio's, and the highest rate that passed in every round.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "afpacket_sip.sh: must run as root (network namespaces, AF_PACKET)" >&2; exit 1
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RATES=${RATES:-"2000 4000 8000"}
TN_RATES=${TN_RATES:-"250 500 1000 2000"}
TRANSPORTS=${TRANSPORTS:-"u1 t1 tn"}
TN_MAX_CALLS=${TN_MAX_CALLS:-6000}
TW_MAX=${TW_MAX:-1000}
DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
SETTLE=${SETTLE:-2}
PROXIES=${PROXIES:-"sipedge-afpacket sipedge-kernel kamailio-stateless"}
SIPEDGE_BIN=${SIPEDGE_BIN:-target/release/sipedge}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
KAM_SHM_MB=${KAM_SHM_MB:-1024}
KAM_PKG_MB=${KAM_PKG_MB:-16}
SIPP_BUF=${SIPP_BUF:-4194304}
KEEP_TMP=${KEEP_TMP:-0}
VETH_NAPI=${VETH_NAPI:-off}

PEER4=198.18.201.1
STK4=198.18.201.2
SIP_PORT=5060
UAS_PORT=5080
UAC_PORT=15090
METRICS=127.0.0.1:9090
READY_LINE="sipedge running on the userspace stack"
NS_PEER="nss-peer-$$"
NS_STK="nss-stk-$$"
IF_PEER="vsp$$"
IF_STK="vss$$"
NPROC=$(nproc)
CLK_TCK=$(getconf CLK_TCK)

# The afpacket variants (a''), one per line of their settings, the one list their names come from:
# name, stack.workers, stack.rx_ring, stack.busy_poll, stack.limits.rx_ring_timeout_ms, stack.mac
# (- = the interface's), stack.tx_checksum_offload. Each runs as proxy sipedge-afpacket-<name>.
AF_VARIANTS=("socket 1 off 0 1 - true" "ring 1 on 0 1 - true" "ring2ms 1 on 0 2 - true"
             "2 2 on 0 1 - true" "busy 1 on 50 1 - true" "ringmac 1 on 0 1 02:5e:00:00:00:02 true"
             "ringswcsum 1 on 0 1 - false")
# is_af_variant PROXY: PROXY is sipedge-afpacket-<name> of a line of AF_VARIANTS.
is_af_variant() {
  local v
  for v in "${AF_VARIANTS[@]}"; do [[ "$1" == "sipedge-afpacket-${v%% *}" ]] && return 0; done
  return 1
}
for p in $PROXIES; do
  case $p in
    sipedge-afpacket|sipedge-afpacket-before|sipedge-kernel|sipedge-kernel-before|kamailio-stateless) ;;
    *) is_af_variant "$p" ||
       { echo "unknown proxy $p (sipedge-afpacket, sipedge-afpacket-before," \
           "$(printf 'sipedge-afpacket-%s, ' "${AF_VARIANTS[@]%% *}")sipedge-kernel," \
           "sipedge-kernel-before, kamailio-stateless)" >&2; exit 2; } ;;
  esac
done
case $VETH_NAPI in
  off) ;;
  peer|both) command -v ethtool >/dev/null ||
    { echo "VETH_NAPI=$VETH_NAPI needs ethtool: apt-get install -y ethtool" >&2; exit 1; } ;;
  *) echo "VETH_NAPI must be off, peer or both, not $VETH_NAPI" >&2; exit 2 ;;
esac
for t in $TRANSPORTS; do
  case $t in
    u1|t1|tn) ;;
    *) echo "unknown transport $t (u1, t1, tn)" >&2; exit 2 ;;
  esac
done
command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
if [[ " $PROXIES " == *" kamailio-stateless "* ]]; then
  command -v kamailio >/dev/null || { echo "kamailio missing: apt-get install -y kamailio" >&2; exit 1; }
  [[ -f "$SHARED_BENCH/kamailio-stateless.cfg" ]] ||
    { echo "missing $SHARED_BENCH/kamailio-stateless.cfg (set SHARED_BENCH)" >&2; exit 1; }
fi
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release
fi
[[ -x "$SIPEDGE_BIN" ]] || { echo "missing $SIPEDGE_BIN (cargo build --release)" >&2; exit 1; }
SIPEDGE_BIN=$(realpath "$SIPEDGE_BIN")
if [[ " $PROXIES " == *" sipedge-kernel-before "* || " $PROXIES " == *" sipedge-afpacket-before "* ]]; then
  [[ -x "${SIPEDGE_BEFORE_BIN:-}" ]] ||
    { echo "sipedge-*-before needs SIPEDGE_BEFORE_BIN (an executable)" >&2; exit 1; }
  SIPEDGE_BEFORE_BIN=$(realpath "$SIPEDGE_BEFORE_BIN")
fi
if [[ -f "$SHARED_BENCH/uac.xml" ]]; then
  UAC_XML=$(realpath "$SHARED_BENCH/uac.xml")
else
  UAC_XML="$ROOT/tests/sipp/uac.xml"
fi

mkdir -p bench/results
OUT="$ROOT/bench/results/afpacket-sip-$(date +%Y%m%d-%H%M%S).jsonl"
TMP=$(mktemp -d /tmp/afpacket-sip.XXXXXX)

PROXY_PID=""
UAS_PID=""

# stop_pid PID SIG GRACE_TENTHS: SIG to PID, then SIGKILL to the same PID if it is still there.
stop_pid() {
  local pid=$1 sig=$2 grace=$3
  [[ -n "$pid" ]] || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq "$grace"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "process $pid ignored SIG$sig: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
stop_proxy() { local p=$PROXY_PID; PROXY_PID=""; stop_pid "$p" TERM 100; }
stop_uas() { local p=$UAS_PID; UAS_PID=""; stop_pid "$p" INT 50; }

cleanup() {
  local rc=$?
  stop_proxy
  stop_uas
  ip netns del "$NS_PEER" 2>/dev/null || true
  ip netns del "$NS_STK" 2>/dev/null || true
  if [[ "$KEEP_TMP" == 1 ]]; then echo "step files kept in $TMP" >&2; else rm -rf "$TMP"; fi
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
ip -n "$NS_PEER" addr add "$PEER4/24" dev "$IF_PEER"
ip -n "$NS_PEER" link set "$IF_PEER" up
ip -n "$NS_STK" link set "$IF_STK" up
ip netns exec "$NS_PEER" sysctl -qw "net.ipv6.conf.$IF_PEER.disable_ipv6=1"
# threaded_napi NS IF OTHER_NS OTHER_IF: IF receives through NAPI in a kernel thread of its own.
threaded_napi() {
  ip netns exec "$1" ethtool -K "$2" gro on >/dev/null
  ip netns exec "$3" ethtool -K "$4" tso off >/dev/null
  ip netns exec "$1" sh -c "echo 1 > /sys/class/net/$2/threaded"
  [[ "$(ip netns exec "$1" cat "/sys/class/net/$2/threaded")" == 1 ]] ||
    { echo "VETH_NAPI=$VETH_NAPI: $2 did not take threaded NAPI" >&2; exit 1; }
}
case $VETH_NAPI in
  peer) threaded_napi "$NS_PEER" "$IF_PEER" "$NS_STK" "$IF_STK" ;;
  both) threaded_napi "$NS_PEER" "$IF_PEER" "$NS_STK" "$IF_STK"
        threaded_napi "$NS_STK" "$IF_STK" "$NS_PEER" "$IF_PEER" ;;
esac
# napi_ticks IF: utime+stime (clock ticks) of the kernel threads running IF's NAPI
# ("napi/<ifname>-<id>", the name cut to 15 characters); 0 when there are none (and without a
# scan of /proc under VETH_NAPI=off, which starts no such thread).
napi_ticks() {
  [[ $VETH_NAPI != off ]] || { echo 0; return; }
  local comm="napi/$1-" total=0 pid name f
  comm=${comm:0:15}
  for f in /proc/[0-9]*/comm; do
    read -r name 2>/dev/null <"$f" || continue
    [[ "$name" == "$comm"* ]] || continue
    pid=${f#/proc/}; pid=${pid%/comm}
    read -r -a st 2>/dev/null <"/proc/$pid/stat" || continue
    total=$((total + st[13] + st[14]))
  done
  echo "$total"
}

STK_ADDR=unset
stack_addrs_kernel() {
  [[ "$STK_ADDR" == kernel ]] && return 0
  ip -n "$NS_STK" addr add "$STK4/24" dev "$IF_STK"
  ip -n "$NS_PEER" neigh flush dev "$IF_PEER"
  STK_ADDR=kernel
}
stack_addrs_none() {
  [[ "$STK_ADDR" == none ]] && return 0
  ip -n "$NS_STK" addr flush dev "$IF_STK"
  ip netns exec "$NS_STK" sysctl -qw "net.ipv6.conf.$IF_STK.disable_ipv6=1"
  ip -n "$NS_PEER" neigh flush dev "$IF_PEER"
  STK_ADDR=none
}

# --- configurations ------------------------------------------------------------------------
# u1 steps: UDP only; t1/tn steps: UDP and TCP.
for tr in udp tcp; do
  if [[ $tr == udp ]]; then
    LISTEN="\"udp:$STK4:$SIP_PORT\""
  else
    LISTEN="\"udp:$STK4:$SIP_PORT\", \"tcp:$STK4:$SIP_PORT\""
  fi
  cat >"$TMP/sipedge-afpacket-$tr.toml" <<EOF
[proxy]
listen = [$LISTEN]
upstreams = ["sip:$PEER4:$UAS_PORT"]

[metrics]
listen = "$METRICS"

[log]
level = "info"

[stack]
mode = "afpacket"
interface = "$IF_STK"
ipv4 = "$STK4/24"
EOF
  # the issue-9 variants: the same file with the shard and ring keys set
  for v in "${AF_VARIANTS[@]}"; do
    read -r vname workers ring busy tmo mac offload <<<"$v"
    { cat "$TMP/sipedge-afpacket-$tr.toml"
      printf 'workers = %s\nrx_ring = "%s"\nbusy_poll = %s\n' "$workers" "$ring" "$busy"
      printf 'tx_checksum_offload = %s\n' "$offload"
      [[ $mac == - ]] || printf 'mac = "%s"\n' "$mac"
      printf '\n[stack.limits]\nrx_ring_timeout_ms = %s\n' "$tmo"; } \
      >"$TMP/sipedge-afpacket-$vname-$tr.toml"
  done
done
if [[ " $PROXIES " == *" kamailio-stateless "* ]]; then
  sed -e "s/127\.0\.0\.1:15060/$STK4:$SIP_PORT/g" \
      -e "s/\"127\.0\.0\.1\", *15080/\"$PEER4\", $UAS_PORT/g" \
      "$SHARED_BENCH/kamailio-stateless.cfg" >"$TMP/kamailio-stateless.cfg"
  if grep -v '^[[:space:]]*#' "$TMP/kamailio-stateless.cfg" | grep -q '127\.0\.0\.1' ||
     ! grep -q "forward_udp(\"$PEER4\", $UAS_PORT)" "$TMP/kamailio-stateless.cfg"; then
    echo "kamailio-stateless.cfg: the sed rewrite left 127.0.0.1 or found no forward_udp" >&2; exit 1
  fi
fi

# --- helpers -------------------------------------------------------------------------------
# listening NS PROTO ADDR:PORT: a socket of NS is bound there.
listening() {
  [[ -n "$(ip netns exec "$1" ss -Hln --"$2" "src $3" 2>/dev/null)" ]]
}

# wait_until SECONDS PID WHAT CMD...: until CMD succeeds; fails if PID exits or time runs out.
wait_until() {
  local limit=$1 pid=$2 what=$3; shift 3
  local deadline=$((SECONDS + limit))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "$what: exited before it was ready" >&2; return 1; fi
    if ((SECONDS >= deadline)); then echo "$what: not ready within $limit s" >&2; return 1; fi
    sleep 0.1
  done
}

# tree_ticks PID: "TICKS NPROCS": utime+stime (clock ticks) of PID and every live descendant,
# plus PID's reaped children (cutime+cstime); NPROCS = processes in the tree.
tree_ticks() {
  python3 - "$1" <<'EOF'
import os, sys
root = int(sys.argv[1])
stat, kids = {}, {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        s = open(f"/proc/{d}/stat").read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    stat[int(d)] = f
    kids.setdefault(int(f[1]), []).append(int(d))
total, n, todo = 0, 0, [root]
while todo:
    p = todo.pop()
    f = stat.get(p)
    if f is None:
        continue
    n += 1
    total += int(f[11]) + int(f[12])
    if p == root:
        total += int(f[13]) + int(f[14])
    todo.extend(kids.get(p, []))
print(total, n)
EOF
}

# udp_errs NS: "RcvbufErrors SndbufErrors InErrors" of the kernel UDP MIB of NS (/proc/net/snmp is
# per network namespace).
udp_errs() {
  ip netns exec "$1" awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) c[$i] = i; h = 1 }
    else print $c["RcvbufErrors"], $c["SndbufErrors"], $c["InErrors"] }' /proc/net/snmp
}

# softnet_drops: packets dropped by a full per-CPU backlog (netdev_max_backlog), all CPUs (global).
softnet_drops() {
  local n=0 x
  while read -r _ x _; do n=$((n + 16#$x)); done </proc/net/softnet_stat
  echo "$n"
}

sipedge_ready() {
  grep -q "$READY_LINE" "$1" &&
    ip netns exec "$NS_STK" curl -sf -m 1 -o /dev/null "http://$METRICS/metrics"
}

# start_proxy NAME DIR TRANSPORT: starts it in the stack netns (PROXY_PID) and waits until it
# serves.
start_proxy() {
  local name=$1 dir=$2 transport=$3 cfg=udp
  [[ $transport == u1 ]] || cfg=tcp
  # Not through a function or subshell: ip netns exec execs the program, so $! is its PID.
  case $name in
    sipedge-afpacket|sipedge-afpacket-*)
      local abin=$SIPEDGE_BIN acfg="$TMP/sipedge-afpacket-$cfg.toml"
      [[ $name != sipedge-afpacket-before ]] || abin=$SIPEDGE_BEFORE_BIN
      ! is_af_variant "$name" || acfg="$TMP/$name-$cfg.toml"
      stack_addrs_none
      ip netns exec "$NS_STK" "$abin" --config "$acfg" \
        </dev/null >"$dir/proxy.log" 2>&1 &
      PROXY_PID=$!
      wait_until 15 "$PROXY_PID" "$name" sipedge_ready "$dir/proxy.log"
      ;;
    sipedge-kernel|sipedge-kernel-before)
      local bin=$SIPEDGE_BIN
      [[ $name == sipedge-kernel ]] || bin=$SIPEDGE_BEFORE_BIN
      stack_addrs_kernel
      ip netns exec "$NS_STK" "$bin" --listen "udp:$STK4:$SIP_PORT" \
        --listen "tcp:$STK4:$SIP_PORT" --upstream "sip:$PEER4:$UAS_PORT" --metrics "$METRICS" \
        </dev/null >"$dir/proxy.log" 2>&1 &
      PROXY_PID=$!
      wait_until 15 "$PROXY_PID" "$name" listening "$NS_STK" udp "$STK4:$SIP_PORT"
      [[ $cfg == udp ]] || wait_until 15 "$PROXY_PID" "$name" listening "$NS_STK" tcp "$STK4:$SIP_PORT"
      ;;
    kamailio-stateless)
      stack_addrs_kernel
      mkdir -p "$dir/run"
      ip netns exec "$NS_STK" kamailio -f "$TMP/kamailio-stateless.cfg" -DD -E \
        -m "$KAM_SHM_MB" -M "$KAM_PKG_MB" -Y "$dir/run" </dev/null >"$dir/proxy.log" 2>&1 &
      PROXY_PID=$!
      wait_until 20 "$PROXY_PID" "$name" listening "$NS_STK" udp "$STK4:$SIP_PORT"
      [[ $cfg == udp ]] || wait_until 20 "$PROXY_PID" "$name" listening "$NS_STK" tcp "$STK4:$SIP_PORT"
      ;;
  esac
  sleep 1 # let workers finish forking / binding (as the harness does)
  kill -0 "$PROXY_PID" 2>/dev/null || { echo "$name exited during start-up" >&2; return 1; }
}

# One progress line on stderr per step, from its JSON line on stdin.
STEP_LINE_PY='
import json, sys
r = json.loads(sys.stdin.read())
verdict = "PASS" if r["pass"] else "FAIL: " + r["fail_reason"]
print("round %d %-18s %s %5d cps: offered %s, ok %d/%d, failed %d, rtx %s%%, cpu %s s (%s s/1000 calls) %s"
      % (r["round"], r["proxy"], r["transport"], r["target_cps"], r["offered_cps"], r["successful"],
         r["calls_target"], r["failed"], r["retrans_pct"], r["proxy_cpu_s"],
         r["proxy_cpu_s_per_1000_calls"], verdict))
'

# time_wait NS: TIME_WAIT sockets in NS.
time_wait() { ip netns exec "$1" ss -Htan state time-wait 2>/dev/null | wc -l; }

# run_step PROXY RATE ROUND TRANSPORT: one measurement, one JSON line appended to $OUT.
run_step() {
  local name=$1 rate=$2 round=$3 transport=$4
  local dir="$TMP/r$round-$transport-$rate-$name" calls=$((rate * DURATION))
  local uas_t=u1 tw_wait=0
  [[ $transport == u1 ]] || uas_t=t1
  if [[ $transport == tn ]]; then
    ((calls <= TN_MAX_CALLS)) || calls=$TN_MAX_CALLS
    local tw_deadline=$((SECONDS + 75))
    while (($(time_wait "$NS_PEER") >= TW_MAX && SECONDS < tw_deadline)); do
      sleep 1
      tw_wait=$((tw_wait + 1))
    done
  fi
  local freq=1 f
  for f in 200 100 50 25 20 10 5 4 2 1; do
    if ((calls % f == 0)); then freq=$f; break; fi
  done
  mkdir -p "$dir"
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  # UAS (stats written on exit: stopped after the proxy)
  ip netns exec "$NS_PEER" sipp -sn uas -i "$PEER4" -p "$UAS_PORT" -t "$uas_t" -nostdin \
    -buff_size "$SIPP_BUF" -trace_stat -stf "$dir/uas_stat.csv" -fd 1 \
    -trace_err -error_file "$dir/uas_err.log" </dev/null >"$dir/uas.out" 2>&1 &
  UAS_PID=$!
  if [[ $uas_t == u1 ]]; then
    wait_until 10 "$UAS_PID" "sipp UAS" listening "$NS_PEER" udp "$PEER4:$UAS_PORT"
  else
    wait_until 10 "$UAS_PID" "sipp UAS" listening "$NS_PEER" tcp "$PEER4:$UAS_PORT"
  fi
  start_proxy "$name" "$dir" "$transport"
  local extra=()
  [[ $transport != tn ]] || extra=(-max_socket 18000)
  local p0 p1 u0 u1 t0 t1 uac_rc=0 nprocs _
  local ks0 kp0 sn0 ks1 kp1 sn1 n0 n1 m0 m1
  ks0=$(udp_errs "$NS_STK"); kp0=$(udp_errs "$NS_PEER"); sn0=$(softnet_drops)
  read -r p0 _ < <(tree_ticks "$PROXY_PID"); read -r u0 _ < <(tree_ticks "$UAS_PID")
  n0=$(napi_ticks "$IF_PEER"); m0=$(napi_ticks "$IF_STK")
  t0=$(date +%s.%N)
  # UAC in the foreground, bounded by -m, sipp's -timeout and a hard wall limit (SIGINT, then
  # SIGKILL 5 s later). Run from $dir: sipp writes its -trace_rtt file in the working directory.
  (cd "$dir" && exec timeout -s INT -k 5 $((DURATION * 3 / 2 + 25)) \
    ip netns exec "$NS_PEER" sipp -sf "$UAC_XML" "$STK4:$SIP_PORT" -i "$PEER4" -p "$UAC_PORT" \
      -t "$transport" "${extra[@]}" -r "$rate" -rp 1000 -m "$calls" \
      -l $((rate * 3 > 100 ? rate * 3 : 100)) -nostdin \
      -buff_size "$SIPP_BUF" -timeout "$((DURATION + 30))s" \
      -trace_stat -stf "$dir/uac_stat.csv" -fd 1 -trace_rtt -rtt_freq "$freq" \
      -trace_err -error_file "$dir/uac_err.log" </dev/null >"$dir/uac.out" 2>&1) || uac_rc=$?
  local t_uac; t_uac=$(date +%s.%N)
  sleep "$SETTLE"
  local alive=1
  kill -0 "$PROXY_PID" 2>/dev/null || alive=0
  read -r p1 nprocs < <(tree_ticks "$PROXY_PID"); read -r u1 _ < <(tree_ticks "$UAS_PID")
  n1=$(napi_ticks "$IF_PEER"); m1=$(napi_ticks "$IF_STK")
  t1=$(date +%s.%N)
  ks1=$(udp_errs "$NS_STK"); kp1=$(udp_errs "$NS_PEER"); sn1=$(softnet_drops)
  local nthreads; nthreads=$(find "/proc/$PROXY_PID/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  if [[ $name == sipedge-* ]]; then
    ip netns exec "$NS_STK" curl -sf -m 2 "http://$METRICS/metrics" >"$dir/metrics.txt" 2>/dev/null || true
  fi
  stop_proxy
  stop_uas
  python3 - "$dir" "$name" "$rate" "$calls" "$round" "$p0" "$p1" "$u0" "$u1" "$t0" "$t_uac" "$t1" \
      "$uac_rc" "$alive" "$NPROC" "$CLK_TCK" "$load1" "$nprocs" "$nthreads" "$DURATION" \
      "$ks0" "$ks1" "$kp0" "$kp1" "$sn0" "$sn1" "$transport" "$tw_wait" "$n0" "$n1" "$m0" "$m1" "$VETH_NAPI" >>"$OUT" <<'EOF'
import glob, json, os, platform, sys
from datetime import datetime
(d, name, rate, calls, rnd, p0, p1, u0, u1, t0, tuac, t1, rc, alive, nproc, tck, load1,
 nprocs, nthreads, dur, ks0, ks1, kp0, kp1, sn0, sn1, transport, tw_wait, n0, n1, m0, m1,
 veth_napi) = sys.argv[1:]
def udp_delta(a, b):
    names = ("rcvbuf_errors", "sndbuf_errors", "in_errors")
    return {n: int(y) - int(x) for n, x, y in zip(names, a.split(), b.split())}
rate, calls, rnd, tck = int(rate), int(calls), int(rnd), int(tck)
def last(path):
    try:
        lines = [l.rstrip("\n") for l in open(path, errors="replace") if l.strip()]
    except OSError:
        return {}
    return dict(zip(lines[0].split(";"), lines[-1].split(";"))) if len(lines) > 1 else {}
def iv(s, k):
    try:
        return int(float(s.get(k, 0) or 0))
    except ValueError:
        return 0
st, ust = last(f"{d}/uac_stat.csv"), last(f"{d}/uas_stat.csv")
created, ok, failed = iv(st, "TotalCallCreated"), iv(st, "SuccessfulCall(C)"), iv(st, "FailedCall(C)")
fails = {k[6:-3]: iv(st, k) for k in st if k.startswith("Failed") and k.endswith("(C)")
         and k != "FailedCall(C)" and iv(st, k)}
uac_rtx, uas_rtx = iv(st, "Retransmissions(C)"), iv(ust, "Retransmissions(C)")
times, rts = [], []
for f in glob.glob(f"{d}/*_rtt.csv"):
    for line in list(open(f))[1:]:
        p = line.strip().split(";")
        try:
            times.append(float(p[0])); rts.append(float(p[1]))
        except (ValueError, IndexError):
            pass
offered = round((len(times) - 1) * 1000.0 / (max(times) - min(times)), 1) \
    if len(times) > 1 and max(times) > min(times) else None
rts.sort()
pctl = lambda q: rts[min(len(rts) - 1, int(round(q * (len(rts) - 1))))] if rts else None
cpu = (int(p1) - int(p0)) / tck
def cpu_model():
    # the machine, so runs from different sessions are compared knowingly
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
drops = None
if os.path.exists(f"{d}/metrics.txt"):
    drops = {}
    for line in open(f"{d}/metrics.txt"):
        if line.startswith("sipedge_netstack_drops_total{") or line.startswith("sipedge_dropped_total"):
            k, _, v = line.rpartition(" ")
            try:
                if float(v) > 0:
                    drops[k] = float(v)
            except ValueError:
                pass
unfinished = max(0, created - ok - failed)
rtx_pct = round(100.0 * (uac_rtx + uas_rtx) / max(1, calls), 3)
reasons = []
if failed or unfinished or created < calls:
    reasons.append(f"failed={failed} unfinished={unfinished} created={created}/{calls}")
if rtx_pct >= 1.0:
    reasons.append(f"retrans={rtx_pct}%")
if offered is None or offered < 0.9 * rate:
    reasons.append(f"offered {offered} < 90% of {rate}")
if alive != "1":
    reasons.append("proxy died")
r = {"ts": datetime.now().isoformat(timespec="seconds"), "proxy": name, "round": rnd,
     "transport": transport, "time_wait_waited_s": int(tw_wait),
     "target_cps": rate, "duration_s": float(dur), "calls_target": calls,
     "offered_cps": offered, "calls_created": created, "successful": ok, "failed": failed,
     "failed_detail": fails, "unfinished": unfinished, "uac_retrans": uac_rtx,
     "uas_retrans": uas_rtx, "retrans_pct": rtx_pct, "uas_failed": iv(ust, "FailedCall(C)"),
     "rt_ms": {"p50": pctl(.5), "p99": pctl(.99), "max": rts[-1] if rts else None},
     "uac_rc": int(rc), "uac_wall_s": round(float(tuac) - float(t0), 3),
     "window_s": round(float(t1) - float(t0), 3),
     "proxy_cpu_s": round(cpu, 3),
     "proxy_cpu_s_per_1000_calls": round(1000 * cpu / ok, 4) if ok else None,
     "proxy_cpu_pct_of_core": round(100 * cpu / (float(t1) - float(t0)), 1),
     "proxy_procs": int(nprocs), "veth_napi": veth_napi,
     "peer_napi_cpu_s": round((int(n1) - int(n0)) / tck, 3),
     "stk_napi_cpu_s": round((int(m1) - int(m0)) / tck, 3),
     "proxy_threads_of_main": int(nthreads), "uas_cpu_s": round((int(u1) - int(u0)) / tck, 3),
     "proxy_drops": drops,
     "kernel_udp_stack_ns": udp_delta(ks0, ks1), "kernel_udp_peer_ns": udp_delta(kp0, kp1),
     "softnet_backlog_drops": int(sn1) - int(sn0), "loadavg1_at_start": float(load1), "nproc": int(nproc),
     "cpu_model": cpu_model(), "kernel": platform.release(),
     "pass": not reasons, "fail_reason": "; ".join(reasons)}
print(json.dumps(r))
EOF
  tail -n 1 "$OUT" | python3 -c "$STEP_LINE_PY" >&2
}

read -r -a PROXY_LIST <<<"$PROXIES"
NPROXY=${#PROXY_LIST[@]}
echo "netns SIP: proxies [$PROXIES] transports [$TRANSPORTS] rates [$RATES] tn rates [$TN_RATES]" \
  "duration ${DURATION}s repeats $REPEATS nproc $NPROC veth NAPI $VETH_NAPI -> $OUT" >&2
# Interleaved: per round, per transport, per rate, every proxy once; the order rotates between
# rounds.
for round in $(seq "$REPEATS"); do
  for transport in $TRANSPORTS; do
    rates=$RATES
    [[ $transport != tn ]] || rates=$TN_RATES
    for rate in $rates; do
      for i in $(seq 0 $((NPROXY - 1))); do
        run_step "${PROXY_LIST[$(((i + round - 1) % NPROXY))]}" "$rate" "$round" "$transport"
      done
    done
  done
done

# --- table -----------------------------------------------------------------------------------
python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
order = {"sipedge-afpacket": 0, "sipedge-afpacket-before": 1, "sipedge-afpacket-socket": 2,
         "sipedge-afpacket-ring": 3, "sipedge-afpacket-ring2ms": 4, "sipedge-afpacket-2": 5,
         "sipedge-afpacket-busy": 6, "sipedge-afpacket-ringmac": 7,
         "sipedge-afpacket-ringswcsum": 8, "sipedge-kernel": 9, "sipedge-kernel-before": 10,
         "kamailio-stateless": 11}
torder = {"u1": 0, "t1": 1, "tn": 2}
groups = {}
for r in rows:
    groups.setdefault((r["proxy"], r.get("transport", "u1"), r["target_cps"]), []).append(r)
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
ref = {(t, rate): med([r["proxy_cpu_s_per_1000_calls"] for r in rs])
       for (p, t, rate), rs in groups.items() if p == "kamailio-stateless"}
print(f"\n{'proxy':21} {'tr':2} {'rate':>5} {'runs':>4} {'pass':>4} {'offered':>7} {'failed':>6} {'rtx%':>6} "
      f"{'p99ms':>5} {'cpu%':>5} {'CPUs/1k':>8} {'vs kam':>6}")
for (p, t, rate), rs in sorted(groups.items(),
                               key=lambda kv: (torder.get(kv[0][1], 9), order.get(kv[0][0], 9),
                                               kv[0][2])):
    c = med([r["proxy_cpu_s_per_1000_calls"] for r in rs])
    ratio = f"{c / ref[(t, rate)]:.2f}" if c is not None and ref.get((t, rate)) else "-"
    off = med([r["offered_cps"] for r in rs])
    p99 = med([r["rt_ms"]["p99"] for r in rs])
    pct = med([r["proxy_cpu_pct_of_core"] for r in rs])
    f = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"
    print(f"{p:21} {t:2} {rate:>5} {len(rs):>4} {sum(r['pass'] for r in rs):>4} {f(off):>7} "
          f"{sum(r['failed'] for r in rs):>6} {f(med([r['retrans_pct'] for r in rs]), 2):>6} "
          f"{f(p99):>5} {f(pct):>5} {f(c, 3):>8} {ratio:>6}")
print("\nmax passing rate (a rate counts when it passed in every round; all rounds in brackets),"
      " and median CPU-s per 1000 calls at that rate:")
for t in sorted({k[1] for k in groups}, key=lambda t: torder.get(t, 9)):
    for p in sorted({k[0] for k in groups if k[1] == t}, key=lambda p: order.get(p, 9)):
        rates = sorted(rate for (q, u, rate) in groups if q == p and u == t)
        every = [rate for rate in rates if all(r["pass"] for r in groups[(p, t, rate)])]
        mine = [(q, u, rate) for (q, u, rate) in groups if q == p and u == t]
        rounds = sorted({r["round"] for k in mine for r in groups[k]})
        per = [max([r["target_cps"] for k in mine for r in groups[k]
                    if r["round"] == n and r["pass"]], default=0) for n in rounds]
        best = max(every) if every else 0
        c = med([r["proxy_cpu_s_per_1000_calls"] for r in groups[(p, t, best)]]) if best else None
        cs = "-" if c is None else f"{c:.3f}"
        print(f"  {t} {p:21} {best:>5} ({', '.join(map(str, per))})  CPU-s/1k {cs}")
print("(medians over rounds; CPUs/1k = proxy CPU seconds per 1000 successful calls; vs kam = that / "
      "kamailio-stateless's at the same rate; cpu% = proxy CPU / measurement window, of one core; "
      "failed = sum)")
EOF
echo "results: $OUT" >&2
