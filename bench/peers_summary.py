"""README tables from bench/peers.py's JSON files: per model, dualtensor's time, the fastest peer's and
their ratio (minimum over the repeats) for inference, backprop and the one-pass forward-gradient steps.
Several files may share a model (e.g. a run at other k): a step an earlier file already gave is taken from it.

    python bench/peers_summary.py bench/results/peers-1t-mlp.json bench/results/peers-1t-cnn.json ...
    python bench/peers_summary.py A-1t.json ... --and A-default.json ...   # one table, two column groups

With ``--and`` the files before it fill the first three columns (one thread) and those after it the next three
(two threads, or whatever the second set of runs used), in table order; a step only one set has gets dashes
in the other.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("inference", "backprop", "weight", "activity")


def rows(path: Path, aggregate: str = "projection") -> list[dict]:
    """The inference, backprop and one-pass ``aggregate`` rows of one peers JSON file."""
    out = []
    for run in json.loads(path.read_text())["runs"]:
        for r in run["rows"]:
            if r["kind"] in ("inference", "backprop") or (r["kind"] == "fg" and r["aggregate"] == aggregate):
                out.append(r)
    return out


def cell(r: dict) -> tuple[str, str, str]:
    t = r["times"]
    peers = {n: v["min"] for n, v in t.items() if n != "dualtensor"}
    if not peers:
        return f"{t['dualtensor']['min']:.3g}", "–", "–"
    best = min(peers, key=peers.get)
    mine = t["dualtensor"]["min"]
    return f"{mine:.3g}", f"{peers[best]:.3g} ({best})", f"{mine / peers[best]:.2f}"


def ordered_rows(paths: list[Path]) -> list[dict]:
    """The rows of ``paths`` in table order; models in the order the files name them; several files may hold
    rows of one model (other k): a row an earlier file gave is left out."""
    models, seen, rs = [], set(), []
    for r in (r for path in paths for r in rows(path)):
        key = (r["model"], r["kind"], r["perturb"], r["k"])
        if key not in seen:
            seen.add(key)
            rs.append(r)
        if r["model"] not in models:
            models.append(r["model"])
    rs.sort(key=lambda r: (models.index(r["model"]), ORDER.index(r["kind"] if r["kind"] != "fg" else r["perturb"]),
                           r["k"] or 0))
    return rs


def label(r: dict) -> str:
    return f"{r['model']} " + (r["kind"] if r["kind"] != "fg" else f"{r['perturb']} k = {r['k']}")


def table(paths: list[Path], second: list[Path] | None = None) -> str:
    if second is None:
        lines = ["| model, step | dualtensor (ms) | fastest peer (ms) | ratio |", "|---|---:|---:|---:|"]
        return "\n".join(lines + [f"| {label(r)} | " + " | ".join(cell(r)) + " |" for r in ordered_rows(paths)])
    lines = ["| model, step | one thread: dualtensor (ms) | fastest peer (ms) | ratio | two threads: dualtensor (ms) "
             "| fastest peer (ms) | ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    by_a, b = {label(r): r for r in ordered_rows(paths)}, {label(r): r for r in ordered_rows(second)}
    names = [label(r) for r in ordered_rows(paths + second)]  # every step of either set, in table order
    for n in names:
        cells = [cell(by_a[n]) if n in by_a else ("–",) * 3, cell(b[n]) if n in b else ("–",) * 3]
        lines.append(f"| {n} | " + " | ".join(c for group in cells for c in group) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--and" in args:
        i = args.index("--and")
        print(table([Path(p) for p in args[:i]], [Path(p) for p in args[i + 1:]]))
    else:
        print(table([Path(p) for p in args]))
