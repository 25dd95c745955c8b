"""Prediction sets of a finished run, every variant from the scores stored in its best.pt: coverage of the
test split (with a 95% Wilson interval), mean set size, singletons and empty sets, per nominal coverage.

    python bench/conformal.py RUN_DIR [--coverage 0.8 0.9 0.95]

Reads checkpoints/best.pt (`extra["conformal"]`, calibrated on the validation split after temperature
scaling) and predictions.csv (the test split's calibrated probabilities); nothing is refitted or rescored.
Prints one JSON document. Not a timing benchmark (no malloc re-exec).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxr.checkpoint import load_checkpoint
from cxr.metrics.conformal_report import conformal_entry
from cxr.metrics.predictions import read_predictions_csv
from cxr.prediction_sets import conformal_of, require_conformal
from cxr.rundir import RunDir


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--coverage", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    calibration = require_conformal(conformal_of(load_checkpoint(run.best), run.best), str(run.best))
    test = read_predictions_csv(run.predictions)
    results = {}
    for coverage in args.coverage:
        entry = conformal_entry(calibration, test.probs, test.labels, coverage=coverage)
        results[f"{coverage:g}"] = {name: {k: v.get(k) for k in ("coverage", "coverage_ci", "mean_size", "singletons",
                                                                  "empty", "worst_class_coverage")}
                                    for name, v in entry["variants"].items()}
    return {"run": str(run.root), "calibration_images": calibration.n, "fitted_on": calibration.record.get("fitted_on"),
            "test_images": int(len(test.labels)), "classes": list(calibration.classes), "k_reg": calibration.k_reg,
            "lambda": calibration.lam, "results": results}


if __name__ == "__main__":
    json.dump(main(sys.argv[1:]), sys.stdout, indent=1)
    sys.stdout.write("\n")
