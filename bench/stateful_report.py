#!/usr/bin/env python3
"""Tables for BENCHMARKS.md section 4 from a bench/stateful.sh run.

  python3 bench/stateful_report.py RESULTS.jsonl IDLE.jsonl [TAG-PREFIX]

CPU: proxy CPU-s (utime+stime of its whole process tree, load + 6 s settle)
per 1000 successful calls.  Memory growth per 1000 calls/s: (peak - idle) /
(rate / 1000), with the idle figure from IDLE.jsonl (same proxy, same run):
sum of VmRSS over the tree and sum of Pss over the tree.  For Kamailio the
RSS sum counts every page of its shared-memory pool once per process that
touched it, so PSS is the figure to compare; for sipedge (one process) the two
differ only by the shared libraries.
"""
import json
import sys

KAM = "kamailio-stateful-ds"
SF = "sipedge-stateful-l5000"
SL = "sipedge-stateless"
RFC = "sipedge-stateful-rfc"


def load(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def main():
    rows = load(sys.argv[1])
    idle = {r["proxy"]: r for r in load(sys.argv[2])}
    pref = sys.argv[3] if len(sys.argv) > 3 else "s10"
    rows = [r for r in rows if (r.get("tag") or "").startswith(pref)]
    sums = [r for r in rows if "summary" in r]
    steps = [r for r in rows if "summary" not in r]

    print("### idle (no load, 4 s after start)\n")
    print("| proxy | processes | RSS sum MB | PSS sum MB |")
    print("|---|---|---|---|")
    for n, r in idle.items():
        print(f"| {n} | {r['nprocs']} | {r['rss_kb']/1024:.1f} | {r['pss_kb']/1024:.1f} |")

    print("\n### findmax summaries\n")
    print("| tag | proxy | t | max passing CPS | first failing CPS | proxy CPU-s/1000 calls at max | p99 ms at max |")
    print("|---|---|---|---|---|---|---|")
    for s in sums:
        u = s.get("us_per_call_at_max")
        print(f"| {s['tag']} | {s['proxy']} | {s['transport']} | {s['max_pass_cps']} | {s['first_fail_cps']} | "
              f"{u/1000 if u else '-'} | {s.get('rt_p99_ms_at_max')} |")

    print("\n### every step\n")
    print("| tag | proxy | t | rate | offered | ok | failed | retrans % | p50/p99 ms | proxy CPU-s | "
          "CPU-s / 1000 calls | peak RSS MB | peak PSS MB | RSS growth MB per 1000 CPS | "
          "PSS growth MB per 1000 CPS | pass / reason |")
    print("|" + "---|" * 16)
    for r in steps:
        n = r["proxy"]
        i = idle.get(n, {})
        k = r["target_cps"] / 1000.0
        rss, pss = r.get("proxy_peak_rss_kb"), r.get("proxy_peak_pss_kb")
        grss = (rss - i["rss_kb"]) / 1024 / k if rss and i else None
        gpss = (pss - i["pss_kb"]) / 1024 / k if pss and i else None
        u = r.get("proxy_cpu_us_per_call")
        rt = r.get("rt_ms") or {}
        print(f"| {r['tag']} | {n} | {r['transport']} | {r['target_cps']} | {r.get('offered_cps')} | "
              f"{r['successful']} | {r['failed']} | {r['retrans_pct']} | {rt.get('p50')}/{rt.get('p99')} | "
              f"{r.get('proxy_cpu_s')} | {u/1000 if u else '-'} | "
              f"{rss/1024 if rss else 0:.1f} | {pss/1024 if pss else 0:.1f} | "
              f"{'-' if grss is None else f'{grss:.1f}'} | {'-' if gpss is None else f'{gpss:.1f}'} | "
              f"{'yes' if r['pass'] else 'NO: ' + r['fail_reason']} |")

    print("\n### ratios within the same tag, same transport, same rate, both passing\n")
    print("| tag | t | rate | sipedge stateful / Kamailio CPU | sipedge stateless / Kamailio CPU | "
          "stateful / stateless CPU | sipedge stateful / Kamailio PSS growth |")
    print("|---|---|---|---|---|---|---|")
    idx = {(r["tag"], r["proxy"], r["transport"], r["target_cps"]): r for r in steps}
    keys = sorted({(r["tag"], r["transport"], r["target_cps"]) for r in steps})
    for tag, t, c in keys:
        k, f, l = (idx.get((tag, p, t, c)) for p in (KAM, SF, SL))

        def ok(x):
            return x and x["pass"] and x.get("proxy_cpu_us_per_call")

        def g(x):
            return (x["proxy_peak_pss_kb"] - idle[x["proxy"]]["pss_kb"]) if x and x["proxy"] in idle else None

        r1 = f"{f['proxy_cpu_us_per_call']/k['proxy_cpu_us_per_call']:.2f}" if ok(k) and ok(f) else "-"
        r2 = f"{l['proxy_cpu_us_per_call']/k['proxy_cpu_us_per_call']:.2f}" if ok(k) and ok(l) else "-"
        r3 = f"{f['proxy_cpu_us_per_call']/l['proxy_cpu_us_per_call']:.2f}" if ok(f) and ok(l) else "-"
        r4 = f"{g(f)/g(k):.3f}" if ok(k) and ok(f) and g(k) and g(f) is not None else "-"
        print(f"| {tag} | {t} | {c} | {r1} | {r2} | {r3} | {r4} |")


if __name__ == "__main__":
    main()
