#!/usr/bin/env python3
"""Per-stage span statistics of a `cascade bench --trace` file: count, mean, median and
total time of each span kind (recv / compute / sample / send) on each stage thread.
"sample" is the last stage's host-side sampling; with --trace its "compute" ends when
the forward's device work has.

    python3 scripts/trace_summary.py trace.json
"""
import collections
import json
import statistics
import sys


def main(path):
    with open(path) as f:
        t = json.load(f)
    events = t["traceEvents"] if isinstance(t, dict) else t
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    spans = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e["name"] in ("recv", "compute", "sample", "send"):
            spans[(e.get("tid"), e["name"])].append(e["dur"] / 1000.0)
    print(f"{'thread':34} {'span':8} {'count':>6} {'mean ms':>9} {'median ms':>10} {'total s':>8}")
    for (tid, name), d in sorted(spans.items()):
        print(f"{names.get(tid, str(tid)):34} {name:8} {len(d):6d} {statistics.mean(d):9.3f} "
              f"{statistics.median(d):10.3f} {sum(d) / 1000:8.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
