"""The tables of bench/growth.sh from its results file (one line per measurement).

    python3 bench/growth_table.py RESULTS
"""
import re
import statistics
import sys

rows = [l.split() for l in open(sys.argv[1]) if l.strip()]


def kv(fields):
    out = {}
    for f in fields:
        m = re.fullmatch(r"([a-z_0-9]+)=([0-9.]+)", f)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def ratio(x, base):
    return f"{x / base:.2f}" if base else "-"


sizes = {}
for r in rows:
    if r[0] == "size":
        size, conns, server = int(r[1]), r[2], r[3]
        sizes.setdefault((size, conns, server), []).append(kv(r[4:]))
memory = {int(r[1]): kv(r[2:]) for r in rows if r[0] == "memory"}

if sizes:
    print("\nMessage size, medians of 3 rounds; ratio = ÷ HAProxy (CPU: the server's, per MB sent)\n")
    print("| size | conns | server | msg/s | MB/s | ratio | CPU ms/MB | ratio | p50 ms | p99 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, conns in sorted({(s, c) for s, c, _ in sizes}, key=lambda k: (k[0], k[1])):
        got = {}
        for server in ("mllp-proxy", "haproxy"):
            runs = sizes.get((size, conns, server), [])
            if not runs:
                continue
            rate = statistics.median(x["msgs_per_sec"] for x in runs)
            cpu = statistics.median(x["cpu_s"] / (x["msgs"] * size / 1e6) for x in runs)
            got[server] = dict(rate=rate, mbs=rate * size / 1e6, cpu=cpu * 1e3,
                               p50=statistics.median(x["p50_us"] for x in runs) / 1e3,
                               p99=statistics.median(x["p99_us"] for x in runs) / 1e3)
        h = got.get("haproxy")
        for server, v in got.items():
            label = f"{size // 1024} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
            print(f"| {label} | {conns[1:]} | {server} | {v['rate']:.1f} | {v['mbs']:.1f} | "
                  f"{ratio(v['rate'], h['rate'])} | {v['cpu']:.2f} | {ratio(v['cpu'], h['cpu'])} | "
                  f"{v['p50']:.2f} | {v['p99']:.2f} | {ratio(v['p99'], h['p99'])} |")
    if memory:
        print("\nThe proxy's memory per size (8 connections × the size in flight at most)\n")
        print("| size | idle RSS MiB | peak RSS MiB | peak − idle ÷ bytes in flight | 10 s after MiB | after ÷ idle |")
        print("|---|---|---|---|---|---|")
        for size, m in sorted(memory.items()):
            label = f"{size // 1024} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
            flight = 8 * size / 1024
            print(f"| {label} | {m['idle_kib'] / 1024:.1f} | {m['peak_kib'] / 1024:.1f} | "
                  f"{(m['peak_kib'] - m['idle_kib']) / flight:.2f} | {m['after_kib'] / 1024:.1f} | "
                  f"{m['after_kib'] / m['idle_kib']:.2f} |")

routes = {}
for r in rows:
    if r[0] == "routes":
        routes[(r[1], int(kv([r[2]])["n"]))] = kv(r[3:])
if routes:
    print("\nRoutes (each its own mutual-TLS listener and engine target); ratio = ÷ HAProxy\n")
    print("| routes | ready ms | ratio | RSS MiB | ratio | KiB per route beyond the first | idle CPU % of a core (probes off) | "
          "HAProxy's | /metrics KB | gzip KB | series per route | scrape ms (gzip) | no-op reload ms | one-route change ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    one = routes.get(("mllp-proxy", 1), {})
    for n in sorted({n for s, n in routes}):
        p, h = routes.get(("mllp-proxy", n)), routes.get(("haproxy", n), {})
        if not p:
            continue
        per = (p["rss_kib"] - one["rss_kib"]) / (n - 1) if n > 1 else float("nan")
        print(f"| {n} | {p['ready_ms']:.0f} | {ratio(p['ready_ms'], h.get('ready_ms', 0))} | "
              f"{p['rss_kib'] / 1024:.1f} | {ratio(p['rss_kib'], h.get('rss_kib', 0))} | {per:.1f} | "
              f"{p['idle_cpu_pct']:.3f} ({p.get('idle_cpu_noprobe_pct', float('nan')):.3f}) | "
              f"{h.get('idle_cpu_pct', float('nan')):.3f} | "
              f"{p['metrics_bytes'] / 1000:.0f} | {p['metrics_gzip_bytes'] / 1000:.1f} | "
              f"{p['route_series'] / n:.0f} | {p['scrape_ms']:.1f} ({p['scrape_gzip_ms']:.1f}) | "
              f"{p['reload_noop_ms']:.1f} | {p['reload_change_ms']:.1f} |")

idle = {r[1]: kv(r[2:]) for r in rows if r[0] == "idle"}
if idle:
    print("\nIdle mutual-TLS connections held while 64 senders send\n")
    print("| server | held | KiB per idle connection | ratio | 64 senders msg/s alone | with them held | ÷ alone | p99 ms alone | held |")
    print("|---|---|---|---|---|---|---|---|---|")
    hk = idle.get("haproxy", {}).get("per_conn_kib", 0)
    for s, v in idle.items():
        print(f"| {s} | {v['held']:.0f} | {v['per_conn_kib']:.1f} | {ratio(v['per_conn_kib'], hk)} | "
              f"{v['alone_rate']:.0f} | {v['busy_rate']:.0f} | {v['busy_rate'] / v['alone_rate']:.2f} | "
              f"{v['alone_p99'] / 1e3:.2f} | {v['busy_p99'] / 1e3:.2f} |")
