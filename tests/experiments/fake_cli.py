"""A stand-in for ``lesionlab train`` / ``lesionlab evaluate`` with the same arguments and outputs, in milliseconds.

It lets the grid runner's scheduling, resume and failure handling be tested with real processes. Accuracy is a
known function of the run's config, so aggregated tables can be checked exactly:
``0.70 + 0.10 [fusion concat] + 0.02 [width 64] + 0.01 * seed``. A model named ``broken`` fails in training; the
model named by the environment variable ``FAKE_SLEEP_MODEL`` trains for two minutes (to be killed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml


def accuracy_of(cfg: dict) -> float:
    """The accuracy this fake evaluator reports for a resolved run config."""
    acc = 0.70 + (0.10 if cfg["model"]["fusion"] == "concat" else 0.0)
    acc += 0.02 if cfg["data"]["image_size"][1] == 64 else 0.0
    return round(acc + 0.01 * cfg["train"]["seed"], 6)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("run_dir", type=Path)
    e = sub.add_parser("evaluate")
    e.add_argument("run", type=Path)
    e.add_argument("--split", required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--tta", action="store_true")
    e.add_argument("--allow-synthetic", action="store_true")
    for flag in ("--bootstrap", "--timing-images", "--device", "--batch-size"):
        e.add_argument(flag)
    e.add_argument("--no-report", action="store_true")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--audit")
    e.add_argument("--tta-views")
    args = parser.parse_args(argv)
    if args.cmd == "train":
        cfg = yaml.safe_load(args.config.read_text())
        print(f"training {cfg['name']} with OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
        if cfg["model"]["name"] == "broken":
            print("model 'broken' cannot be built", file=sys.stderr)
            return 3
        if cfg["model"]["name"] == os.environ.get("FAKE_SLEEP_MODEL"):  # stands in for a long training run
            args.run_dir.mkdir(parents=True, exist_ok=True)
            (args.run_dir / "pid.txt").write_text(str(os.getpid()))
            time.sleep(120)
        args.run_dir.mkdir(parents=True, exist_ok=True)
        counter = args.run_dir / "train_calls.txt"
        counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
        (args.run_dir / "run.json").write_text(json.dumps({"config": cfg, "status": "complete",
                                                           "threads": os.environ.get("OMP_NUM_THREADS")}))
        return 0
    info = json.loads((args.run / "run.json").read_text())
    acc = accuracy_of(info["config"]) + (0.005 if args.tta_views == "dihedral" else 0.0)
    per_class = {c: {"tpr": acc, "tnr": 1.0, "gmean": acc ** 0.5} for c in
                 ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")}
    per_class["df"]["tpr"] = None  # undefined, as for a class absent from a fold
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps({"n": 100, "accuracy": acc, "error_rate": 1 - acc,
                                                       "balanced_accuracy": acc - 0.1, "per_class": per_class,
                                                       "split": args.split, "tta": args.tta}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
