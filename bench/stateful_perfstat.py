#!/usr/bin/env python3
"""Instruction counts per call of sipedge builds (issue #10 follow-up): the
same sipp load (loopback, sipp UAC -> sipedge 127.0.0.1:25060 -> sipp UAS
127.0.0.1:25080, the shared harness's uac.xml) through each binary and mode,
with `perf stat -p PID` counting the proxy's context switches and
task-clock (software counters: this VM exposes no hardware counters), and,
with CALLGRIND=1, the proxy run under callgrind for its user-space
instruction count (Ir, start-up included) per call: stable on a shared box
where wall-clock CPU is not. Kernel instructions are not counted.
Memory: peak RSS (VmHWM) minus RSS just before the load, per 1000 calls/s.

  bench/stateful_perfstat.sh OUT.jsonl NAME=BIN [NAME=BIN ...]
  env: TRANSPORTS (u1,t1), MODES (stateful,stateless), RATE (1000),
       CALLS (8000), SETTLE (6), ROUNDS (1), CALLGRIND (0),
       SYSCALLS (0: 1 also counts every syscall by kind and the scheduler's
       wake-ups with perf's tracepoints, reported per call),
       PORT (25060: the proxy; the UAC uses PORT+10, the UAS PORT+20),
       WORKERS (unset: the proxy's default; else proxy.workers),
       PROFILE (0: 1 also samples the proxy with `perf record -e cpu-clock -g`
       into the step's folder, perf.data, for `perf report`)

Besides perf's figures, the proxy's CPU (utime+stime from /proc) and the
voluntary / involuntary context switches of each of its threads (by name,
from /proc/PID/task) over the load + settle window are reported per call.

Every process is started here and stopped by its PID.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

SIPP = os.environ.get("SIPP", "/usr/bin/sipp")
HARNESS = os.environ.get("HARNESS", "/work/shared/bench")
UAC_XML = os.path.join(HARNESS, "uac.xml")

PORT = int(os.environ.get("PORT", "25060"))
# the kinds counted one by one with SYSCALLS=1 (a glob over every syscall
# tracepoint takes perf ~15 s to tear down); the total counts every kind
SYSCALL_KINDS = ["recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg", "sendmmsg",
                 "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "futex", "read",
                 "write", "writev", "sched_yield", "madvise", "mmap", "munmap", "mprotect",
                 "brk", "clock_nanosleep"]

TOML = """[proxy]
listen = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]
drain_timeout_secs = 0
{workers}upstreams = ["sip:127.0.0.1:{uas}"]
{mode}
[log]
level = "warn"
{txn}
"""


def conf(mode, d):
    w = os.environ.get("WORKERS", "")
    ports = {"port": PORT, "uas": PORT + 20, "workers": f"workers = {w}\n" if w else ""}
    text = TOML.format(mode='mode = "stateful"', txn="[transaction]\nlinger_ms = 5000", **ports) \
        if mode == "stateful" else TOML.format(mode="", txn="", **ports)
    p = os.path.join(d, mode + ".toml")
    with open(p, "w") as f:
        f.write(text)
    return p


def rss_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop(p, sig=signal.SIGTERM, grace=5):
    if p is None or p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def parse_perf(path):
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or not parts[0] or parts[0].startswith("#"):
                continue
            try:
                out[parts[2]] = float(parts[0])
            except ValueError:
                pass
    return out


def callgrind_ir(path):
    total = 0
    d = os.path.dirname(path)
    for f in os.listdir(d):
        if f.startswith(os.path.basename(path)):
            with open(os.path.join(d, f)) as fh:
                for line in fh:
                    if line.startswith("totals:") or line.startswith("summary:"):
                        total += int(line.split()[1])
                        break
    return total


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        v = s[s.rindex(")") + 2:].split()
        return int(v[11]) + int(v[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0


def thread_switches(pid):
    """{thread name: [voluntary, involuntary]} summed over same-named threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            v = [0, 0]
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        v[0] = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        v[1] = int(line.split()[1])
        except OSError:
            continue
        a = out.setdefault(name, [0, 0])
        a[0] += v[0]
        a[1] += v[1]
    return out


def stat_row(path):
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
        head = lines[0].split(";")
        last = lines[-1].split(";")
        return dict(zip(head, last))
    except (OSError, IndexError):
        return {}


def measure(name, binary, mode, t, rate, calls, settle, d):
    run = tempfile.mkdtemp(prefix=f"ps-{name}-{mode}-{t}-", dir=d)
    uas = subprocess.Popen([SIPP, "-sn", "uas", "-i", "127.0.0.1", "-p", str(PORT + 20), "-t", t,
                            "-nostdin", "-buff_size", "4194304"],
                           stdout=open(os.path.join(run, "uas.out"), "w"),
                           stderr=subprocess.STDOUT)
    time.sleep(0.5)
    cg = os.environ.get("CALLGRIND", "0") == "1"
    cg_out = os.path.join(run, "callgrind.out")
    pre = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}"] if cg else []
    px = subprocess.Popen(pre + [binary, "--config", conf(mode, run)],
                          stdout=open(os.path.join(run, "proxy.log"), "w"),
                          stderr=subprocess.STDOUT)
    perf = uac = rec = None
    res = {"name": name, "mode": mode, "transport": t, "rate": rate, "calls": calls}
    try:
        time.sleep(8 if cg else 1.5)
        rss0 = rss_kb(px.pid, "VmRSS")
        perf_out = os.path.join(run, "perf.csv")
        events = ["-e", "context-switches,cpu-migrations,task-clock"]
        if os.environ.get("SYSCALLS", "0") == "1":
            events += ["-e", ",".join(["raw_syscalls:sys_enter", "sched:sched_wakeup"]
                                      + ["syscalls:sys_enter_" + k for k in SYSCALL_KINDS])]
        perf = subprocess.Popen(["perf", "stat", "-x,", "-o", perf_out] + events
                                + ["-p", str(px.pid)])
        if os.environ.get("PROFILE", "0") == "1":
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2999",
                                    "-g", "-o", os.path.join(run, "perf.data"),
                                    "-p", str(px.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        ticks0, sw0 = cpu_ticks(px.pid), thread_switches(px.pid)
        stf = os.path.join(run, "uac_stat.csv")
        uac = subprocess.Popen([SIPP, "-sf", UAC_XML, f"127.0.0.1:{PORT}", "-i", "127.0.0.1",
                                "-p", str(PORT + 10), "-t", t, "-r", str(rate), "-rp", "1000",
                                "-m", str(calls), "-l", str(max(100, 3 * rate)), "-nostdin",
                                "-buff_size", "4194304", "-timeout", f"{calls // rate + 30}s",
                                "-trace_stat", "-stf", stf, "-fd", "1"],
                               stdout=open(os.path.join(run, "uac.out"), "w"),
                               stderr=subprocess.STDOUT)
        uac.wait(calls / rate * 2 + 40)
        time.sleep(settle)
        peak = rss_kb(px.pid, "VmHWM")
        ticks1, sw1 = cpu_ticks(px.pid), thread_switches(px.pid)
        stop(perf, signal.SIGINT)
        stop(rec, signal.SIGINT, grace=30)
        res["run_dir"] = run
        perf = None
        c = parse_perf(perf_out)
        st = stat_row(stf)
        ok = int(st.get("SuccessfulCall(C)", "0") or 0)
        failed = int(st.get("FailedCall(C)", "0") or 0)
        per = max(ok, 1)
        res.update({
            "successful": ok, "failed": failed,
            "cs_per_call": round(c.get("context-switches", 0) / per, 2),
            "task_clock_ms_per_1000": round(c.get("task-clock", 0) / per * 1000, 1),
            "rss_growth_mb_per_1000cps": round((peak - rss0) / 1024 / (rate / 1000), 2),
            "cpu_us_per_call": round((ticks1 - ticks0) * 1e6 / os.sysconf("SC_CLK_TCK") / per, 1),
            "thread_switches_per_call": {
                n: [round((v[0] - sw0.get(n, [0, 0])[0]) / per, 3),
                    round((v[1] - sw0.get(n, [0, 0])[1]) / per, 3)]
                for n, v in sorted(sw1.items())},
        })
        if os.environ.get("SYSCALLS", "0") == "1":
            res["syscalls_per_call"] = round(c.get("raw_syscalls:sys_enter", 0) / per, 2)
            res["syscalls_by_kind_per_call"] = {
                k.split("sys_enter_", 1)[1]: round(v / per, 3)
                for k, v in sorted(c.items(), key=lambda kv: -kv[1])
                if k.startswith("syscalls:sys_enter_") and v > 0}
            res["wakeups_per_call"] = round(c.get("sched:sched_wakeup", 0) / per, 2)
    finally:
        stop(uac, signal.SIGINT)
        stop(perf, signal.SIGINT)
        stop(rec, signal.SIGINT, grace=30)
        stop(px, grace=60 if cg else 5)
        if cg:
            res["callgrind_ir_per_call"] = round(callgrind_ir(cg_out) / max(res.get("successful", 0), 1))
        stop(uas, signal.SIGINT)
        time.sleep(1)
    return res


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    out = sys.argv[1]
    bins = [a.split("=", 1) for a in sys.argv[2:]]
    ts = os.environ.get("TRANSPORTS", "u1,t1").split(",")
    modes = os.environ.get("MODES", "stateful,stateless").split(",")
    rate = int(os.environ.get("RATE", "1000"))
    calls = int(os.environ.get("CALLS", "8000"))
    settle = float(os.environ.get("SETTLE", "6"))
    rounds = int(os.environ.get("ROUNDS", "1"))
    d = tempfile.mkdtemp(prefix="sipedge-perfstat-")
    with open(out, "a") as f:
        for r in range(rounds):
            for t in ts:
                for mode in modes:
                    # interleave the binaries, order rotated per round
                    order = bins[r % len(bins):] + bins[:r % len(bins)]
                    for name, binary in order:
                        res = measure(name, binary, mode, t, rate, calls, settle, d)
                        res["round"] = r + 1
                        print(json.dumps(res), flush=True)
                        f.write(json.dumps(res) + "\n")
                        f.flush()


if __name__ == "__main__":
    main()
