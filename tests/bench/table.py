#!/usr/bin/env python3
"""Turns run.sh's raw figures (bench-raw.txt) into the Markdown tables of
issue 6: one per key type, the figures, the ratios and the targets with
PASS or FAIL.

    table.py BENCH-RAW.TXT > bench-results.md
"""
import sys

KEYS = [("ec256", "EC P-256"), ("rsa2048", "RSA-2048")]
CONNS = [1, 4, 16]
THREADS = [1, 2, 4]
MIB = 1024.0

# figure -> (EC P-256, RSA-2048); ("min", x) means at least x, ("max", x) at most x.
TARGETS = {
    "token": (("min", 0.5), ("min", 0.85)),
    "cfssl": (("min", 1.5), ("min", 1.2)),
    "script": (("min", 100.0), ("min", 20.0)),
    "p99": (("max", 5.0), ("max", 15.0)),
    "rss": (("max", 24.0), ("max", 24.0)),
}


def parse(path):
    """Each line is a tag and key=value fields."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            rows.append((parts[0], fields))
    return rows


def pick(rows, tag, **match):
    return [f for t, f in rows if t == tag and all(f.get(k) == v for k, v in match.items())]


def fmt_rate(x):
    return "not run" if x is None else f"{x:,.0f}"


def fmt_ms(us):
    return "not run" if us is None else f"{us / 1000.0:.2f}"


def check(value, target):
    kind, limit = target
    if value is None:
        return "FAIL"
    ok = value >= limit if kind == "min" else value <= limit
    return "PASS" if ok else "FAIL"


def ratio(a, b):
    return None if a is None or not b else a / b


def merge_wrk(runs):
    """One figure per connection count from every round: the best rate,
    the lowest p50 and p99 (background load only ever slows things down),
    and the wrong answers and socket errors of all rounds together."""
    out = {}
    for f in runs:
        c = int(f["conns"])
        m = out.setdefault(c, {"per_second": 0.0, "p50_us": None, "p99_us": None,
                               "bad": 0, "socket_errors": 0, "ok": 0})
        m["per_second"] = max(m["per_second"], float(f["per_second"]))
        for k in ("p50_us", "p99_us"):
            v = float(f[k])
            m[k] = v if m[k] is None else min(m[k], v)
        for k in ("bad", "socket_errors", "ok"):
            m[k] += int(f[k])
    return out


def key_figures(rows, key):
    token = {}
    for f in pick(rows, "P11SPEED", key=key):
        n = int(f["threads"])
        token[n] = max(token.get(n, 0.0), float(f["per_second"]))
    popsignd = merge_wrk(pick(rows, "WRK", target="popsignd", key=key))
    cfssl = merge_wrk(pick(rows, "WRK", target="cfssl", key=key))
    script_rate = best([float(f["certificates"]) / float(f["seconds"])
                        for f in pick(rows, "SCRIPT", key=key)])
    issue = None
    for f in pick(rows, "ISSUE", key=key):
        if issue is None or float(f["per_second"]) > float(issue["per_second"]):
            issue = f
    return token, popsignd, cfssl, script_rate, issue


def best(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def rate_of(runs, c):
    return runs[c]["per_second"] if c in runs else None


def figure_rows(token, popsignd, cfssl, script_rate, issue):
    out = ["| measured | 1 | 2 | 4 | 16 | best |", "|---|---:|---:|---:|---:|---:|"]
    t = [token.get(n) for n in THREADS]
    out.append("| token limit: C_Sign/s (threads) | %s | %s | %s | | **%s** |"
               % (fmt_rate(t[0]), fmt_rate(t[1]), fmt_rate(t[2]), fmt_rate(best(t))))
    for name, runs in (("popsignd: certificates/s", popsignd),
                       ("cfssl serve, key in a file: certificates/s", cfssl)):
        r = [rate_of(runs, c) for c in CONNS]
        out.append("| %s (connections) | %s | | %s | %s | **%s** |"
                   % (name, fmt_rate(r[0]), fmt_rate(r[1]), fmt_rate(r[2]), fmt_rate(best(r))))
    for name, runs in (("popsignd", popsignd), ("cfssl serve", cfssl)):
        lat = ["%s / %s" % (fmt_ms(runs[c]["p50_us"]), fmt_ms(runs[c]["p99_us"]))
               if c in runs else "not run" for c in CONNS]
        out.append("| %s: p50 / p99 ms (connections) | %s | | %s | %s | |"
                   % (name, lat[0], lat[1], lat[2]))
    for name, runs in (("popsignd", popsignd), ("cfssl serve", cfssl)):
        bad = ["%s / %s" % (runs[c]["bad"], runs[c]["socket_errors"]) if c in runs else "not run"
               for c in CONNS]
        out.append("| %s: wrong status / socket errors (connections) | %s | | %s | %s | |"
                   % (name, bad[0], bad[1], bad[2]))
    out.append("| one openssl command per certificate: certificates/s (sequential) | %s | | | | **%s** |"
               % (fmt_rate(script_rate), fmt_rate(script_rate)))
    if issue:
        out.append("| popsignd's issuing code alone, token stubbed out: certificates/s (1 thread; %s us each) | %s | | | | |"
                   % (issue["us_each"], fmt_rate(float(issue["per_second"]))))
    return out


def target_rows(i, token, popsignd, cfssl, script_rate, issue, rss_mib, audit):
    p_best = best([rate_of(popsignd, c) for c in CONNS])
    c_best = best([rate_of(cfssl, c) for c in CONNS])
    p99 = popsignd[4]["p99_us"] / 1000.0 if 4 in popsignd else None
    clean = bool(popsignd) and all(r["bad"] == 0 and r["socket_errors"] == 0
                                   for r in popsignd.values())
    rows = [
        ("popsignd / token limit (best of each)", ratio(p_best, best(token.values())), "token", "%.2f"),
        ("popsignd / cfssl serve (best of each)", ratio(p_best, c_best), "cfssl", "%.2f"),
        ("popsignd / one openssl command per certificate", ratio(p_best, script_rate), "script", "%.1f"),
        ("popsignd p99 latency at 4 connections, ms", p99, "p99", "%.2f"),
        ("resident memory of popsignd's processes after the run, MiB", rss_mib, "rss", "%.1f"),
    ]
    out = ["| target | measured | required | result |", "|---|---:|---:|---|"]
    for label, value, name, form in rows:
        kind, limit = TARGETS[name][i]
        shown = "not run" if value is None else form % value
        req = ("at least " if kind == "min" else "at most ") + ("%g" % limit)
        out.append("| %s | %s | %s | %s |" % (label, shown, req, check(value, TARGETS[name][i])))
    out.append("| every popsignd answer 201, no socket errors | %s | yes | %s |"
               % ("yes" if clean else "no", "PASS" if clean else "FAIL"))
    out.append("| measured with the audit log on: a record for every certificate | %s | yes | %s |"
               % (audit[1], "PASS" if audit[0] else "FAIL"))
    return out


def audit_state(rows, info):
    """(met, text): whether every certificate popsignd issued in the run
    (warm-up and profile runs included) has an "issued" audit record."""
    if info.get("audit_log") != "1":
        return False, "no: the daemon does not take audit_log"
    issued = sum(int(f["ok"]) for f in pick(rows, "WRK")
                 if f.get("target") in ("popsignd", "warmup", "profile"))
    records = int(info.get("audit_issued", "0"))
    return records >= issued, "%d records for %d certificates" % (records, issued)


def main():
    rows = parse(sys.argv[1])
    info = {}
    for f in pick(rows, "INFO"):
        info.update(f)
    rss = pick(rows, "RSS")
    rss_mib = sum(int(f["kib"]) for f in rss) / MIB if rss else None
    audit = audit_state(rows, info)
    print("# popsignd benchmark (tests/bench/run.sh)\n")
    print("%s, %s CPUs, commit %s, %s rounds of %s s per wrk run (each figure: its best "
          "round), audit log %s, load average %s at the start and %s at the end.\n"
          % (info.get("date", "?"), info.get("cpus", "?"), info.get("commit", "?"),
             info.get("rounds", "1"), info.get("seconds", "?"),
             "on" if info.get("audit_log") == "1" else "off",
             info.get("load_start", "?"),
             info.get("load_end", "?")))
    load = float(info.get("load_start", "0"))
    if load > 1.0:
        print("**The machine was busy when the run started (load average %.2f): other work "
              "competed for the CPUs and the figures are noisy.**\n" % load)
    if rss:
        print("popsignd processes after the run: %s.\n"
              % ", ".join("%s (pid %s) %.1f MiB" % (f.get("comm", "?"), f["pid"], int(f["kib"]) / MIB)
                          for f in rss))
    for i, (key, title) in enumerate(KEYS):
        figures = key_figures(rows, key)
        print("## %s (key %s)\n" % (title, key))
        print("\n".join(figure_rows(*figures)))
        print()
        print("\n".join(target_rows(i, *figures, rss_mib, audit)))
        print()


if __name__ == "__main__":
    main()
