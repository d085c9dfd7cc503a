#!/usr/bin/env python3
"""Issue #10 acceptance run: Kamailio stateful (tm + dispatcher) vs sipedge
stateful vs sipedge stateless, on the shared sipp harness (../../shared/bench,
loopback only), rounds interleaved (every proxy in turn per transport, the
order rotated each round).

  bench/stateful.sh ladder  TAG    # findmax ladder per proxy and transport
  bench/stateful.sh fixed   TAG    # one step per proxy and transport at $RATE
  bench/stateful.sh idle    TAG    # idle RSS/PSS of every proxy (no load)
  bench/stateful.sh linger0 TAG    # sipedge stateful with the RFC timers (linger_ms = 0)

Every measurement is a JSON line in $BENCH_OUT/results.jsonl (the harness's);
idle lines go to $BENCH_OUT/idle.jsonl.  Processes are started and stopped by
PID only (the harness does the same for its own).
"""
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARNESS = os.environ.get("HARNESS", os.path.join(ROOT, "..", "..", "shared", "bench"))
if not os.path.isdir(HARNESS):
    HARNESS = "/work/shared/bench"
RUN = os.path.join(HARNESS, "run.sh")
OUT = os.environ.get("BENCH_OUT", "/tmp/sipedge-bench-stateful")
BIN = os.environ.get("SIPEDGE", os.path.join(ROOT, "target", "release", "sipedge"))
CONF = os.path.join(OUT, "conf")

TOML = """[proxy]
listen = ["udp:127.0.0.1:15060", "tcp:127.0.0.1:15060"]
upstreams = ["sip:127.0.0.1:15080"]
{mode}
[metrics]
listen = "127.0.0.1:19090"
[log]
level = "warn"
{txn}
"""


def write_confs():
    os.makedirs(CONF, exist_ok=True)
    confs = {
        "stateless": TOML.format(mode="", txn=""),
        "stateful-linger5000": TOML.format(mode='mode = "stateful"',
                                           txn="[transaction]\nlinger_ms = 5000"),
        "stateful-rfc": TOML.format(mode='mode = "stateful"',
                                    txn="[transaction]\nlinger_ms = 0"),
    }
    for k, v in confs.items():
        with open(os.path.join(CONF, k + ".toml"), "w") as f:
            f.write(v)


def proxies():
    dslist = os.path.join(HERE, "kamailio-dispatcher.list")
    kam = ("/usr/sbin/kamailio -f " + os.path.join(HERE, "kamailio-stateful-dispatcher.cfg")
           + " -DD -E -m 1024 -M 16 -A DISPATCHER_LIST='\"" + dslist + "\"' -Y \"$PWD/run\"")
    return {
        "kamailio-stateful-ds": kam,
        "sipedge-stateful-l5000": f"{BIN} --config {CONF}/stateful-linger5000.toml",
        "sipedge-stateless": f"{BIN} --config {CONF}/stateless.toml",
        "sipedge-stateful-rfc": f"{BIN} --config {CONF}/stateful-rfc.toml",
    }


def harness(mode, name, cmd, t, extra, tag):
    env = dict(os.environ, PROXY_CMD=cmd, PROXY_NAME=name, BENCH_OUT=OUT)
    argv = [RUN, mode, "custom", "-t", t, "--tag", tag, "-o", OUT] + extra
    print(f"### {time.strftime('%H:%M:%S')} {name} {t}: {' '.join(argv[1:])}", flush=True)
    subprocess.run(argv, env=env, check=False)


def tree_pids(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            pp = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(pp, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kb(path, key):
    try:
        for line in open(path):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def idle(name, cmd, tag):
    """Start the proxy alone, wait 4 s, sample sum VmRSS / Pss over its tree."""
    d = os.path.join(OUT, "idle", name)
    os.makedirs(os.path.join(d, "run"), exist_ok=True)
    log = open(os.path.join(d, "proxy.log"), "wb")
    p = subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=d, stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    time.sleep(4.0)
    pids = tree_pids(p.pid)
    rec = {"idle": True, "proxy": name, "tag": tag, "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "nprocs": len(pids),
           "rss_kb": sum(kb(f"/proc/{x}/status", "VmRSS") for x in pids),
           "pss_kb": sum(kb(f"/proc/{x}/smaps_rollup", "Pss") for x in pids),
           "max_hwm_kb": max(kb(f"/proc/{x}/status", "VmHWM") for x in pids),
           "alive_at_sample": p.poll() is None}
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # its own session: group id == this PID
        p.wait(5)
    print("IDLE " + json.dumps(rec), flush=True)
    with open(os.path.join(OUT, "idle.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    time.sleep(1.0)


def main():
    mode, tag = sys.argv[1], sys.argv[2]
    os.makedirs(OUT, exist_ok=True)
    write_confs()
    px = proxies()
    order = ["kamailio-stateful-ds", "sipedge-stateful-l5000", "sipedge-stateless"]
    rounds = int(os.environ.get("ROUNDS", "1"))
    first = int(os.environ.get("FIRST_ROUND", "1"))
    ts = os.environ.get("TRANSPORTS", "u1,t1").split(",")
    dur = os.environ.get("DURATION", "8")
    if mode == "idle":
        for n in order + ["sipedge-stateful-rfc"]:
            idle(n, px[n], tag)
        return
    if mode == "linger0":
        rate = os.environ.get("RATE", "2000")
        for t in ts:
            harness("run", "sipedge-stateful-rfc", px["sipedge-stateful-rfc"], t,
                    ["-r", rate, "-d", dur], tag)
        return
    for r in range(first, first + rounds):
        k = (r - 1) % len(order)
        rot = order[k:] + order[:k]
        for t in ts:
            for n in rot:
                if mode == "ladder":
                    extra = ["--rates", os.environ.get("RATES", "2000,4000,8000,16000"),
                             "-d", dur, "--refine", os.environ.get("REFINE", "1")]
                    # findmax numbers its repeats from 1; the round goes into the tag
                    harness("findmax", n, px[n], t, extra, f"{tag}-r{r}")
                else:
                    extra = ["-r", os.environ.get("RATE", "4000"), "-d", dur,
                             "--first-repeat", str(r)]
                    harness("run", n, px[n], t, extra, f"{tag}-r{r}")


if __name__ == "__main__":
    main()
