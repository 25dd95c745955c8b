"""`cxr compare RUN_A RUN_B`: paired comparison of two runs on the same test images."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cxr.cli._common import add_command, existing_path, positive_int

ROWS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("roc_auc_macro", "ROC-AUC (macro)"))


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cxr compare` to the `cxr` parser."""
    p = add_command(sub, "compare", cmd_compare, "paired comparison of two runs on the same test images",
                    description="Compare run A with run B on the images both scored (their predictions.csv, "
                    "aligned by path; the files must hold the same images with the same labels). Accuracy: "
                    "McNemar's exact test and a Newcombe interval of the difference; macro-F1 and macro "
                    "ROC-AUC: a paired bootstrap resampled within each true class (BCa interval). "
                    "Differences are A - B with 95% intervals.")
    p.add_argument("run_a", metavar="RUN_A", type=existing_path, help="run folder or predictions.csv of run A")
    p.add_argument("run_b", metavar="RUN_B", type=existing_path, help="run folder or predictions.csv of run B")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.add_argument("--json", action="store_true", help="print the whole comparison as JSON")


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _p(value: float | None, floor: float = 0.0) -> str:
    """A p-value; at the bootstrap's smallest possible value (2 / (resamples + 1)) shown as "<=" that."""
    if value is None:
        return "n/a"
    text = f"{value:.2g}" if value < 0.001 else f"{value:.4f}"
    return f"<={text}" if value <= floor else text


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a small text table (what `cxr compare` prints)."""
    lines = [
        f"A: {result['a']}",
        f"B: {result['b']}",
        f"{result['n']} images, {len(result['classes'])} classes; differences are A - B, 95% intervals",
        "",
        f"{'metric':<16} {'A':>7} {'B':>7} {'A - B':>8}  {'95% CI':<19} {'p':>8}  test",
    ]
    for key, label in ROWS:
        row = result.get(key)
        if row is None:
            lines.append(f"{label:<16} n/a (needs probabilities and a class with positives and negatives)")
            continue
        ci = row["ci"]
        interval = f"{_num(ci[0], True)} to {_num(ci[1], True)}" if ci else "n/a"
        floor = 0.0
        if key == "accuracy":
            test = row["mcnemar"]
            how = f"McNemar exact (only A right: {test['a_only_correct']}, only B right: {test['b_only_correct']})"
        else:
            floor = 2.0 / (result["bootstrap"]["n"] + 1)
            how = f"paired bootstrap ({row['ci_method']}, {result['bootstrap']['n']} resamples)"
        lines.append(f"{label:<16} {_num(row['a']):>7} {_num(row['b']):>7} {_num(row['difference'], True):>8}  "
                     f"{interval:<19} {_p(row['p_value'], floor):>8}  {how}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from cxr.metrics.compare import compare_prediction_files

    result = compare_prediction_files(args.run_a, args.run_b, n_boot=args.bootstrap, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0
