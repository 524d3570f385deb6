"""
Benchmark data: real run-to-run noise, collected through the sandbox (train, export, fixed evaluation).

Each recipe is measured with SEEDS random seeds at its budget, and every validation accuracy is saved to
benchmarks/data/noise_bank.json with the machine, the settings and the date (written after each run, so
a stopped collection keeps what it measured). benchmarks/decision_power.py resamples these scores as its
"real" noise model; the small CNN at 90% of the budget is what a 10% slow-down of the machine does to a
recipe, measured rather than assumed; the label-smoothing variant is a small real effect for the
end-to-end check.

Usage: python benchmarks/noise_bank.py [--seeds 12] [--budget 20] [--recipes baseline,small_cnn,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prepare  # noqa: E402
from infra.sandbox.allowances import measure_allowances  # noqa: E402
from infra.sandbox.trial import run_trial  # noqa: E402
from infra.settings import BASELINE_TRAIN_PY, Limits  # noqa: E402

BANK = Path(__file__).with_name("data") / "noise_bank.json"
SMALL_CNN = Path(__file__).with_name("small_cnn_train.py").read_text()
SMOOTHED_LOSS = "F.cross_entropy(body(x_train[idx]), y_train[idx], label_smoothing=0.1)"
assert "F.cross_entropy(body(x_train[idx]), y_train[idx])" in SMALL_CNN

# name -> (train.py, fraction of the budget it gets)
RECIPES = {
    "baseline": (BASELINE_TRAIN_PY.read_text(), 1.0),
    "small_cnn": (SMALL_CNN, 1.0),
    "small_cnn_slow10": (SMALL_CNN, 0.9),  # a machine 10% slower: the same recipe with 90% of the work
    "small_cnn_smooth": (SMALL_CNN.replace("F.cross_entropy(body(x_train[idx]), y_train[idx])", SMOOTHED_LOSS), 1.0),
}


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cpu": model, "cores": os.cpu_count(), "node": platform.node(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--out", type=Path, default=BANK)
    args = parser.parse_args()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")
    val = prepare.load_split_uint8("val")
    bank = json.loads(args.out.read_text()) if args.out.exists() else {}
    bank.update(
        {
            "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_threads": args.cpu_threads,
            "budget_s": args.budget,
        }
    )
    recipes = bank.setdefault("recipes", {})
    with tempfile.TemporaryDirectory(prefix="noise-bank-") as tmp:
        scratch = Path(tmp)
        allowances = measure_allowances(scratch / "probe", cpu_threads=args.cpu_threads)
        bank["allowances"] = {"startup_s": allowances.startup_s, "export_s": allowances.export_s}
        for name in names:
            code, share = RECIPES[name]
            limits = Limits(
                budget_s=args.budget * share,
                startup_allowance_s=allowances.startup_s,
                export_allowance_s=allowances.export_s,
                cpu_threads=args.cpu_threads,
            )
            entry = recipes.setdefault(name, {"budget_s": limits.budget_s, "runs": []})
            if entry["budget_s"] != limits.budget_s:  # another budget: measured again from scratch
                entry.update(budget_s=limits.budget_s, runs=[])
            while len(entry["runs"]) < args.seeds:
                seed = secrets.randbelow(2**31)
                result = run_trial(code, scratch / f"{name}-{seed}", limits, seed=seed, val=val)
                entry["runs"].append(
                    {
                        "seed": seed,
                        "status": str(result.status),
                        "val_accuracy": result.val_accuracy,
                        "epochs": result.epochs,
                        "contended": result.contended,
                    }
                )
                print(
                    f"noise bank: {name} seed {seed}: {result.status} epochs {result.epochs} "
                    f"val_accuracy {result.val_accuracy}",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(bank, indent=1) + "\n")
    for name in names:
        scores = [r["val_accuracy"] for r in recipes[name]["runs"] if r["status"] == "ok"]
        if len(scores) >= 2:
            print(
                f"noise bank: {name} ({recipes[name]['budget_s']:g} s): mean {statistics.fmean(scores):.4f} "
                f"sd {statistics.stdev(scores):.4f} min {min(scores):.4f} max {max(scores):.4f} over {len(scores)}"
            )


if __name__ == "__main__":
    main()
