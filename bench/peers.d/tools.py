#!/usr/bin/env python3
"""Helpers of bench/peers (the standard library only, but for `plot`, which needs matplotlib).

  tools.py ports N                      N free TCP ports on 127.0.0.1, one a line
  tools.py wait DIR N TIMEOUT [PID...]  waits until N workers not in PID... serve (DIR/PID
                                        files of live processes, written by app.js once it
                                        listens); prints the wall-clock time seen, in ns since
                                        the epoch, and the new pids; exit 1 at the timeout
  tools.py snap DIR                     {pid: requests served} of the workers, as JSON
  tools.py share BEFORE AFTER           busiest/least busy ratio of the requests each worker
                                        that lived through both served in between
  tools.py report RESULTS.tsv MACHINE.json OUT.md [PNG REC_DIR [STALL_PNG]]
                                        the tables of BENCHMARKS.md (and the pictures)
"""
import json
import os
import socket
import statistics
import sys
import time


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has not been reaped yet but no longer serves.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def workers(d):
    out = {}
    for name in os.listdir(d):
        if name.isdigit():
            try:
                with open(os.path.join(d, name)) as f:
                    out[int(name)] = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
    return out


def cmd_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print("\n".join(str(s.getsockname()[1]) for s in socks))


def cmd_wait(d, n, timeout, *known):
    known = {int(p) for p in known}
    end = time.monotonic() + float(timeout)
    while True:
        new = [p for p in workers(d) if p not in known and alive(p)]
        if len(new) >= int(n):
            print(time.time_ns(), *sorted(new))
            return 0
        if time.monotonic() > end:
            print(f"timed out after {timeout}s: {len(new)} of {n} workers serve", file=sys.stderr)
            return 1
        time.sleep(0.005)


def cmd_snap(d):
    print(json.dumps({p: c for p, c in workers(d).items() if alive(p)}))


def cmd_share(before, after):
    with open(before) as f:
        b = json.load(f)
    with open(after) as f:
        a = json.load(f)
    deltas = [a[p] - b[p] for p in a if p in b]
    if not deltas:
        print("nan")
    elif min(deltas) == 0:
        print("inf")
    else:
        print(f"{max(deltas) / min(deltas):.3f}")


# --- the report -------------------------------------------------------------------------------

NAMES = {
    "corral-shared": "corral, shared socket",
    "corral-balanced": "corral, `balance = true`",
    "pm2": "PM2 cluster mode",
    "cluster-rr": "node cluster, rr",
    "cluster-none": "node cluster, none (shared)",
    "nginx": "nginx + 4 copies",
}
CORRALS = ["corral-shared", "corral-balanced"]
PEERS = ["pm2", "cluster-rr", "cluster-none", "nginx"]

# metric: (label, unit, higher is better, decimals)
METRICS = {
    "rps_close": ("req/s, new connection per request", "req/s", True, 0),
    "rps_ka": ("req/s, keep-alive (16 conns)", "req/s", True, 0),
    "p50_close": ("p50 latency, new connection", "ms", False, 2),
    "p99_close": ("p99 latency, new connection", "ms", False, 2),
    "p50_ka": ("p50 latency, keep-alive", "ms", False, 2),
    "p99_ka": ("p99 latency, keep-alive", "ms", False, 2),
    "share_ka": ("busiest/least busy worker, keep-alive 16", "×", False, 2),
    "share_close": ("busiest/least busy worker, new connection", "×", False, 2),
    "conns_ka": ("busiest/least busy worker by connections held, keep-alive 16", "×", False, 2),
    "sup_rss": ("supervisor RSS", "MiB", False, 1),
    "idle_cpu": ("supervisor idle CPU", "ms/10 s", False, 0),
    "reload_ms": ("reload under load, duration", "ms", False, 0),
    "reload_fail_close": ("reload: failed requests, new-connection client", "", False, 0),
    "reload_fail_ka": ("reload: failed requests, keep-alive client", "", False, 0),
    "reload_fail_rec": ("reload: failed requests, recording client", "", False, 0),
    "reload_max": ("reload: worst latency a client saw", "ms", False, 0),
    "start64_ms": ("launch to 64 workers serving", "ms", False, 0),
    "crash_ms": ("kill -9 of a worker to its replacement serving", "ms", False, 0),
    "crash_fail_close": ("kill -9 under load: failed, new-connection client", "", False, 0),
    "crash_fail_ka": ("kill -9 under load: failed, keep-alive client", "", False, 0),
    "stall_rps": ("stalled worker: req/s, new connection", "req/s", True, 0),
    "stall_p99": ("stalled worker: p99 latency, new connection", "ms", False, 1),
    "stall_p999": ("stalled worker: p99.9 latency, new connection", "ms", False, 0),
    "stall_max": ("stalled worker: worst latency", "ms", False, 0),
    "stall_rec_slow": ("stalled worker: recording client's requests ≥ 100 ms", "%", False, 1),
    "stall_rec_max": ("stalled worker: recording client's worst latency", "ms", False, 0),
    "background_busy": ("other work on the machine at the start", "% CPU", False, 0),
}

SECTIONS = [
    ("Throughput and latency (4 workers)", ["rps_close", "rps_ka", "p50_close", "p99_close", "p50_ka", "p99_ka"]),
    ("Per-worker share of requests (4 workers)", ["share_ka", "share_close", "conns_ka"]),
    ("Supervisor footprint (4 workers)", ["sup_rss", "idle_cpu"]),
    ("Rolling reload under load (4 workers)", ["reload_ms", "reload_fail_close", "reload_fail_ka", "reload_fail_rec", "reload_max"]),
    ("Start and crash", ["start64_ms", "crash_ms", "crash_fail_close", "crash_fail_ka"]),
    ("A stalled worker (1 s busy loop every ~2 s, 4 workers, 16 clients, new connection per request)", ["stall_rps", "stall_p99", "stall_p999", "stall_max", "stall_rec_slow", "stall_rec_max"]),
    ("Other work on the machine (CPU busy over 1 s before each contender's turn, none of it ours)", ["background_busy"]),
]


def fmt(v, dec):
    if v != v:
        return "–"
    if v == float("inf"):
        return "∞"
    if dec == 0:
        return f"{v:,.0f}"
    return f"{v:,.{dec}f}"


def load(results):
    data = {}
    with open(results) as f:
        for line in f:
            rnd, who, metric, value = line.rstrip("\n").split("\t")
            data.setdefault((who, metric), []).append(float(value))
    return data


def med(vals):
    return statistics.median(vals) if vals else float("nan")


def cell(vals, dec):
    if not vals:
        return "–"
    m = fmt(med(vals), dec)
    if len(vals) == 1:
        return m
    return f"{m} ({fmt(min(vals), dec)}–{fmt(max(vals), dec)})"


def ratio(a, b, dec):
    if a != a or b != b:
        return "–"
    if b == 0 and a == 0:
        return "= (0)"
    if a == float("inf") and b == float("inf"):
        return "= (∞)"
    if b == 0 or a == float("inf") or b == float("inf"):
        return f"{fmt(a, dec)} : {fmt(b, dec)}"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def report(results, machine, out, png=None, recdir=None, stall_png=None):
    data = load(results)
    with open(machine) as f:
        m = json.load(f)
    who = [w for w in CORRALS + PEERS if any(k[0] == w for k in data)]
    peers = [w for w in PEERS if w in who]
    corrals = [w for w in CORRALS if w in who]
    rounds = m["rounds"]
    L = []
    L.append(f"Figures of one run of `bash bench/peers` ({m['date']}, {rounds} interleaved rounds, "
             f"{m['runtime_min']} min). Each cell: the median over the rounds, and the spread (min–max).")
    L.append("")
    L.append("| machine | |")
    L.append("|---|---|")
    for k in ["cpu", "nproc", "memory", "kernel", "node", "pm2", "nginx", "wrk", "corral"]:
        L.append(f"| {k} | {m[k]} |")
    L.append("")
    L.append(f"Settings: {m['settings']}")
    L.append("")

    # Ratios first: corral against each peer, medians.
    L.append("### corral against the peers (ratio of medians)")
    L.append("")
    L.append("Each cell is corral's median divided by the peer's: shared socket / `balance = true`. "
             "For req/s higher is better; for everything else (latency, share, RSS, CPU, times) lower is.")
    L.append("")
    L.append("| figure | " + " | ".join(NAMES[p] for p in peers) + " |")
    L.append("|---|" + "---|" * len(peers))
    for metric in ["rps_close", "rps_ka", "p50_close", "p99_close", "p50_ka", "p99_ka", "share_ka", "share_close",
                   "sup_rss", "idle_cpu", "reload_ms", "reload_max", "start64_ms", "crash_ms", "stall_rps", "stall_p99", "stall_rec_slow", "stall_rec_max"]:
        label = METRICS[metric][0]
        row = []
        for p in peers:
            pv = med(data.get((p, metric), []))
            parts = [ratio(med(data.get((c, metric), [])), pv, METRICS[metric][3]) for c in corrals]
            row.append(" / ".join(parts))
        L.append(f"| {label} | " + " | ".join(row) + " |")
    L.append("")
    L.append("`A : B` where a ratio has no meaning (a 0 or ∞ on one side). Failed requests are not "
             "ratios: see the raw tables, where a 0 against a 0 is what counts. Latency percentiles are wrk's, "
             "which wrk corrects for coordinated omission (bench/README.md): the recording "
             "client's figures are each request counted once.")
    L.append("")

    for title, metrics in SECTIONS:
        L.append(f"### {title}")
        L.append("")
        L.append("| | " + " | ".join(f"{METRICS[k][0]}" + (f" ({METRICS[k][1]})" if METRICS[k][1] else "") for k in metrics) + " |")
        L.append("|---|" + "---|" * len(metrics))
        for w in who:
            L.append(f"| {NAMES[w]} | " + " | ".join(cell(data.get((w, k), []), METRICS[k][3]) for k in metrics) + " |")
        L.append("")
    # Totals of failures over all rounds.
    L.append("Failed requests summed over all rounds (wrk's connect/read/write/timeout errors plus non-2xx answers; "
             "the recording client's refused, reset or timed-out requests):")
    L.append("")
    L.append("| | reload, new conn. | reload, keep-alive | reload, recorder | kill -9, new conn. | kill -9, keep-alive |")
    L.append("|---|---|---|---|---|---|")
    for w in who:
        s = [fmt(sum(data.get((w, k), [])), 0) for k in ["reload_fail_close", "reload_fail_ka", "reload_fail_rec", "crash_fail_close", "crash_fail_ka"]]
        L.append(f"| {NAMES[w]} | " + " | ".join(s) + " |")
    L.append("")

    # The goals.
    L.append("### The goals of the issue")
    L.append("")
    sk = data.get(("corral-balanced", "share_ka"), [])
    if sk:
        ok = max(sk) <= 1.3
        L.append(f"- Balanced, 4 workers, 16 keep-alive clients, busiest ≤ 1.3× the least busy: "
                 f"**{'met' if ok else 'not met'}**: median {fmt(med(sk), 2)}×, rounds {', '.join(fmt(v, 2) for v in sk)} "
                 f"(shared socket: median {fmt(med(data.get(('corral-shared', 'share_ka'), [])), 2)}×).")
    rb, rs = data.get(("corral-balanced", "rps_close"), []), data.get(("corral-shared", "rps_close"), [])
    if rb and rs:
        ok = med(rb) >= med(rs)
        L.append(f"- Balanced throughput, new connection per request, at least the shared socket's: "
                 f"**{'met' if ok else 'not met'}**: {fmt(med(rb), 0)} against {fmt(med(rs), 0)} req/s (medians; "
                 f"{med(rb) / med(rs):.3f}×).")
    for c in corrals:
        fails = {k: sum(data.get((c, k), [])) for k in ["reload_fail_close", "reload_fail_ka", "reload_fail_rec", "crash_fail_close", "crash_fail_ka"]}
        if any(data.get((c, k)) for k in fails):
            rel = fails["reload_fail_close"] + fails["reload_fail_ka"] + fails["reload_fail_rec"]
            kil = fails["crash_fail_close"] + fails["crash_fail_ka"]
            L.append(f"- {NAMES[c]}: no failed request when a reload runs under load: **{'met' if rel == 0 else 'not met'}** "
                     f"({fmt(rel, 0)} over {rounds} rounds: {fmt(fails['reload_fail_close'], 0)} new-connection, "
                     f"{fmt(fails['reload_fail_ka'], 0)} keep-alive, {fmt(fails['reload_fail_rec'], 0)} recorder); "
                     f"when a worker is killed: **{'met' if kil == 0 else 'not met'}** ({fmt(fails['crash_fail_close'], 0)} new-connection, "
                     f"{fmt(fails['crash_fail_ka'], 0)} keep-alive).")
    L.append("")
    if png:
        L.append(f"![client latency through a reload]({os.path.relpath(png)})")
        L.append("")
        L.append("The recording client's requests (one new connection each, 100/s, beside the two wrk clients) "
                 "through one rolling reload of the last round; the shaded band is the reload, red crosses "
                 "are failed requests.")
        L.append("")
    if stall_png:
        L.append(f"![client latency while a worker stalls]({os.path.relpath(stall_png)})")
        L.append("")
        L.append("The recording client's requests during the stall test of the last round: each shaded band is "
                 "one /stall request, from its sending to its answer (the worker's event loop is blocked for 1 s "
                 "of it).")
        L.append("")
    with open(out, "w") as f:
        f.write("\n".join(L))
    if png and recdir:
        plot(recdir, png, who)
    if stall_png and recdir:
        plot(recdir, stall_png, who, "stall")


def plot(recdir, png, who, kind="reload"):
    """One panel per contender: the recording client's requests over time (rec/WHO.csv, or
    rec/stall-WHO.csv), the reload or the stalls shaded (WHO.reload, stall-WHO.stalls: a
    start and end in ms since the epoch a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix, bands_ext = ("", "reload") if kind == "reload" else ("stall-", "stalls")
    panels = [w for w in who if os.path.exists(os.path.join(recdir, f"{prefix}{w}.csv"))]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, w in zip(axes.flat, panels):
        with open(os.path.join(recdir, f"{prefix}{w}.csv")) as f:
            lines = f.read().splitlines()
        t0 = json.loads(lines[0].lstrip("# "))["t0_epoch_ms"]
        with open(os.path.join(recdir, f"{prefix}{w}.{bands_ext}")) as f:
            bands = [[(int(x) - t0) / 1000 for x in line.split()] for line in f if line.strip()]
        xs, ys, fx = [], [], []
        for line in lines[2:]:
            t, lat, status = line.split(",")
            t, lat = float(t) / 1000, float(lat)
            if status.startswith("2"):
                xs.append(t)
                ys.append(max(lat, 0.05))
            else:
                fx.append(t)
        for b0, b1 in bands:
            ax.axvspan(b0, b1, color="#f2d0a0", alpha=0.6, lw=0)
        ax.scatter(xs, ys, s=3, color="#1f5fa8")
        if fx:
            ax.scatter(fx, [3000] * len(fx), s=25, marker="x", color="red")
        ax.set_yscale("log")
        slow = sum(1 for y in ys if y >= 100)
        if kind == "reload":
            what = f"reload {bands[0][1] - bands[0][0]:.2f} s, {len(fx)} failed, worst {max(ys) if ys else 0:.0f} ms"
        else:
            what = f"{slow} of {len(ys) + len(fx)} requests ≥ 100 ms, worst {max(ys) if ys else 0:.0f} ms"
        ax.set_title(f"{NAMES[w].replace('`', '')}: {what}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel("latency (ms)")
    if kind == "reload":
        fig.suptitle("Client latency through a rolling reload of 4 workers under load (recording client, new connection per request)")
    else:
        fig.suptitle("Client latency while a worker stalls 1 s at a time (shaded), under load (recording client, new connection per request)")
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "ports": cmd_ports,
        "wait": cmd_wait,
        "snap": cmd_snap,
        "share": cmd_share,
        "report": report,
    }[cmd]
    sys.exit(fn(*args) or 0)


if __name__ == "__main__":
    main()
