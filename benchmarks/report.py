"""Speed-up table from pytest-benchmark JSON files.

    pytest benchmarks --benchmark-json=out.json
    python benchmarks/report.py out.json [--markdown]
    python benchmarks/report.py run1.json run2.json ... [--markdown]   # ranges over runs

Generic over benchmark files: entries are grouped by ``benchmark.group``; in each group
the entry with ``extra_info["role"] == "ours"`` (or ``"side"``) is compared with every other entry (the
peers, each the baseline of one row): ratio = median peer / median ours. A peer's
optional ``extra_info["target"]`` is the speed-up the SPEC asks for; the exit status
is 1 when a target is missed (in any run). Several files (repeated runs, for a noisy
machine): one row per comparison with the range of each median and of the ratio, the
median ratio, and in how many runs the target was met.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def _role(bench: dict) -> str | None:
    info = bench.get("extra_info", {})
    return info.get("role", info.get("side"))  # "side" is the same tag in older files


def _label(bench: dict) -> str:
    return bench.get("extra_info", {}).get("entry") or bench.get("name", "?")


def rows(data: dict) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data.get("benchmarks", []):
        groups[b.get("group") or b.get("name", "?")].append(b)
    out = []
    for group, benches in groups.items():
        ours = [b for b in benches if _role(b) == "ours"]
        peers = [b for b in benches if _role(b) != "ours"]
        if not ours:
            print(f"warning: group {group!r} has no 'ours' entry; skipped", file=sys.stderr)
            continue
        for o in ours:  # several of ours (e.g. cuda and triton) each get their rows
            om = o["stats"]["median"]
            for p in peers:
                pm = p["stats"]["median"]
                target = p.get("extra_info", {}).get("target")
                ratio = pm / om
                out.append({
                    "group": group,
                    "ours": _label(o),
                    "ours_median_s": om,
                    "peer": _label(p),
                    "peer_median_s": pm,
                    "ratio": ratio,
                    "target": target,
                    "met": None if target is None else ratio >= target,
                })
    return out


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def table(rs: list[dict], markdown: bool = False) -> str:
    head = ["group", "ours (median)", "peer", "peer (median)", "speed-up", "target", "met"]
    body = []
    for r in rs:
        tgt = "" if r["target"] is None else f">= {r['target']:g}x"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        body.append([r["group"], _fmt_time(r["ours_median_s"]), r["peer"], _fmt_time(r["peer_median_s"]),
                     f"{r['ratio']:.1f}x", tgt, met])
    return _render(head, body, markdown)


def ranges(runs: list[list[dict]]) -> list[dict]:
    """Rows of several runs merged per (group, ours, peer), in first-seen order."""
    merged: dict[tuple, list[dict]] = {}
    for rs in runs:
        for r in rs:
            merged.setdefault((r["group"], r["ours"], r["peer"]), []).append(r)
    out = []
    for (group, ours, peer), rs in merged.items():
        ratios = sorted(r["ratio"] for r in rs)
        target = rs[0]["target"]
        out.append({
            "group": group,
            "ours": ours,
            "peer": peer,
            "ours_median_s": (min(r["ours_median_s"] for r in rs), max(r["ours_median_s"] for r in rs)),
            "peer_median_s": (min(r["peer_median_s"] for r in rs), max(r["peer_median_s"] for r in rs)),
            "ratio": (ratios[0], ratios[-1]),
            "median_ratio": ratios[len(ratios) // 2],
            "target": target,
            "met": None if target is None else sum(r >= target for r in ratios),
            "runs": len(ratios),
        })
    return out


def range_table(rs: list[dict], markdown: bool = False) -> str:
    head = ["group", "ours (median)", "peer", "peer (median)", "speed-up", "median", "target", "met"]
    body = []
    for r in rs:
        (o0, o1), (p0, p1), (r0, r1) = r["ours_median_s"], r["peer_median_s"], r["ratio"]
        tgt = "" if r["target"] is None else f">= {r['target']:g}x"
        met = "" if r["met"] is None else f"{r['met']} of {r['runs']}"
        body.append([r["group"], f"{_fmt_time(o0)} - {_fmt_time(o1)}", r["peer"],
                     f"{_fmt_time(p0)} - {_fmt_time(p1)}", f"{r0:.1f}-{r1:.1f}x", f"{r['median_ratio']:.1f}x",
                     tgt, met])
    return _render(head, body, markdown)


def _render(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="file(s) written by pytest --benchmark-json; several: ranges")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    runs = []
    for path in args.json:
        with open(path) as f:
            runs.append(json.load(f))
    data = runs[0]
    if len(runs) > 1:
        rs = ranges([rows(d) for d in runs])
        print(range_table(rs, args.markdown))
        ok = all(r["met"] is None or r["met"] == r["runs"] for r in rs)
    else:
        rs = rows(data)
        print(table(rs, args.markdown))
        ok = all(r["met"] is not False for r in rs)
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {}).get("brand_raw", "")
    if cpu:
        print(f"\n{cpu}; medians; ratio = median peer / median ours" + (f"; {len(runs)} runs" if len(runs) > 1 else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
