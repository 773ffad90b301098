"""The training figures quoted in README, measured by running the README's own commands.

    python bench/training.py                  # digits default + Fashion-MNIST MLP table (~3 min)
    python bench/training.py --large          # + the ResNet18 / ViT subset runs (~20 min)
    python bench/training.py --only digits    # one group
    python bench/training.py --render bench/results/training.json   # redraw the tables

Each run is ``python -m dualtensor train <the README's options> --out <temp> --quiet`` in a
subprocess (``--out``/``--quiet`` change no result); its ``summary.json`` gives the figures. Writes
``bench/results/training.md`` (the tables README quotes) and ``bench/results/training.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FM = ("--dataset fashion-mnist --no-download --model mlp --width 256 --depth 2 --batch-size 64 --optimizer sgd "
      "--epochs 1").split()
SUBSET = "--dataset fashion-mnist --no-download --limit 256 --batch-size 16 --epochs 19 --k 4 --optimizer adam".split()

GROUPS: dict[str, list[tuple[str, list[str], tuple[int, ...]]]] = {
    "digits": [("digits default", [], (0,))],
    "fashion": [
        ("backprop", [*FM, "--grad", "backprop", "--lr", "0.1"], (0, 1, 2)),
        ("forward gradient, activity, k = 16, projection",
         [*FM, "--grad", "forward", "--perturb", "activity", "--k", "16", "--aggregate", "projection", "--lr", "1.5"],
         (0, 1, 2, 3, 4)),
        ("simulated, same estimator",
         [*FM, "--grad", "simulated", "--perturb", "activity", "--k", "16", "--aggregate", "projection", "--lr", "1.5"],
         (0, 1, 2, 3, 4)),
        ("forward gradient as above, one BLAS thread",
         [*FM, "--grad", "forward", "--perturb", "activity", "--k", "16", "--aggregate", "projection", "--lr", "1.5",
          "--threads", "1"], (0,)),
        ("backprop as above, keeping the last partial batch",
         [*FM, "--grad", "backprop", "--lr", "0.1", "--no-drop-last"], (0,)),
    ],
    "large": [
        ("ResNet18, activity k = 4, Adam", ["--model", "resnet18", *SUBSET, "--lr", "2e-4"], (0,)),
        ("ViT (width 128, depth 4), activity k = 4, Adam",
         ["--model", "vit", "--width", "128", "--depth", "4", *SUBSET, "--lr", "1e-4"], (0,)),
    ],
}


def train(args: list[str], seed: int, root: Path) -> dict:
    out = root / f"run{len(list(root.iterdir()))}"
    cmd = [sys.executable, "-m", "dualtensor", "train", *args, *(["--seed", str(seed)] if seed else []),
           "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seed": seed, "test_acc": summary["test_acc"], "wall_s": summary["wall_time_s"],
            "step_s": 1 / summary["steps_per_s"], "blas_threads": summary["blas_threads"],
            "first_train_loss": history[0]["train_loss"], "last_train_loss": history[-1]["train_loss"],
            "steps": summary["steps"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--large", action="store_true", help="also the ResNet18 and ViT subset runs")
    p.add_argument("--only", choices=tuple(GROUPS), help="run one group")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"), help="output folder")
    p.add_argument("--render", metavar="JSON", help="only redraw the tables of an earlier results file")
    a = p.parse_args()
    if a.render:
        print(render(json.loads(Path(a.render).read_text())), end="")
        return
    groups = [a.only] if a.only else ["digits", "fashion", *(["large"] if a.large else [])]
    results: dict = {"python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for group in groups:
            for name, args, seeds in GROUPS[group]:
                rows = [train(args, s, Path(tmp)) for s in seeds]
                results["runs"].append({"group": group, "name": name, "command": " ".join(
                    ["python -m dualtensor train", *args]), "seeds": rows})
                accs = ", ".join(f"{r['test_acc']:.2%}" for r in rows)
                print(f"{name}: test accuracy {accs}; wall {rows[0]['wall_s']:.1f} s", flush=True)
    out = Path(a.results)
    name = "training" if not a.only else f"training_{a.only}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{name}.md").write_text(render(results))
    print(f"wrote {out / (name + '.md')}")


def render(results: dict) -> str:
    """The Markdown tables of a results dict (``--render FILE.json`` redraws them)."""
    lines = ["# Training results (bench/training.py)", "",
             f"Measured {results['date']}, Python {results['python']}, BLAS threads "
             f"{results['runs'][0]['seeds'][0]['blas_threads']} (the library default). The BLAS thread count "
             "changes the order of floating-point sums, so another count gives other last digits.", "",
             "| run | command | test accuracy (seed 0) | other seeds | wall (seed 0) | s/step | training loss, "
             "first -> last epoch |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in results["runs"]:
        s0, rest = r["seeds"][0], r["seeds"][1:]
        others = ", ".join(f"{x['seed']}: {x['test_acc']:.2%}" for x in rest)
        if rest:
            mean = sum(x["test_acc"] for x in r["seeds"]) / len(r["seeds"])
            others += f" (mean of all {len(r['seeds'])}: {mean:.2%})"
        loss = (f"{s0['first_train_loss']:.2f} -> {s0['last_train_loss']:.2f}"
                if s0["first_train_loss"] != s0["last_train_loss"] else f"{s0['last_train_loss']:.2f} (one epoch)")
        lines.append(f"| {r['name']} | `{r['command']}` | {s0['test_acc']:.2%} | {others or '-'} | "
                     f"{s0['wall_s']:.1f} s | {s0['step_s']:.3f} | {loss}, {s0['steps']} steps |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
