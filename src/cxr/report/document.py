"""report.md and a self-contained report.html, written from the files of a run directory.

The report is first built as a short list of blocks (headings, paragraphs, tables, images), then
rendered twice, so the Markdown and HTML versions always hold the same content. Every input file is
optional: a missing or unreadable one turns its section into a "not available" note, never a crash,
so a report can be written for an interrupted or partial run. Standard library + PyYAML only.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from cxr.errors import CxrError
from cxr.logs import RESULT

log = logging.getLogger(__name__)

# The seed's published test results (SEED_README.md, "Testing Results"), in its column order.
SEED_RESULTS = {"loss": 0.207, "accuracy": 0.928, "precision": 0.933, "recall": 0.926}
SPLITS = ("train", "val", "test")
HISTORY_COLUMNS = (
    "epoch", "lr", "train_loss", "train_accuracy", "train_precision", "train_recall", "train_macro_f1",
    "val_loss", "val_accuracy", "val_precision", "val_recall", "val_macro_f1", "seconds",
)
FIGURE_CAPTIONS = {
    "bar_chart": "Images per class (all splits)",
    "pie_chart": "Class shares (all splits)",
    "dataset_images": "Sample images per class",
    "loss": "Training and validation loss per epoch",
    "accuracy": "Training and validation accuracy per epoch",
    "precision": "Training and validation precision (Keras semantics) per epoch",
    "recall": "Training and validation recall (Keras semantics) per epoch",
    "confusion_matrix": "Confusion matrix on the test split, normalised by predicted label",
    "roc": "ROC curves on the test split, one class vs rest",
    "reliability": "Reliability diagram on the test split (top-label calibration)",
    "classification_report": "Classification report on the test split",
}
DATASET_FIGURES = ("bar_chart", "pie_chart", "dataset_images")
TRAINING_FIGURES = ("loss", "accuracy", "precision", "recall")
TEST_FIGURES = ("confusion_matrix", "roc", "reliability", "classification_report")
MAX_AUG_IMAGES = 20  # augmented samples shown; the seed's README showed a handful
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Blocks: the report's content, independent of the output format.


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Bold:
    text: str


Inline = str | Code | Bold


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    parts: tuple[Inline, ...]
    missing: bool = False  # a "not available" note, styled as such in HTML


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Pre:
    text: str


@dataclass(frozen=True)
class Image:
    path: Path  # the file, read for the HTML
    rel: str  # posix path relative to the run directory, linked from the Markdown
    caption: str


@dataclass(frozen=True)
class Gallery:
    images: tuple[Image, ...]
    width: int = 160


@dataclass(frozen=True)
class Bullets:
    items: tuple[Para, ...]


Block = Heading | Para | Table | Pre | Image | Gallery | Bullets


def para(*parts: Inline) -> Para:
    return Para(tuple(parts))


def not_available(what: str, why: str) -> Para:
    return Para((f"{what}: not available ({why}).",), missing=True)


# ---------------------------------------------------------------------------------------------
# Reading the run directory.


@dataclass
class RunFiles:
    """Everything read from a run directory; None where a file is missing or unreadable."""

    run_dir: Path
    config: dict[str, Any] | None = None
    history: list[dict[str, str]] | None = None
    history_columns: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    split_counts: dict[str, dict[str, int]] | None = None  # class -> split -> images
    figures: dict[str, Path] = field(default_factory=dict)  # stem -> file
    aug_images: list[Path] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # file name -> why it is not used


def _read_text(files: RunFiles, name: str) -> str | None:
    path = files.run_dir / name
    if not path.is_file():
        files.problems[name] = f"{name} is missing from the run directory"
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        files.problems[name] = f"{name} could not be read: {exc}"
        log.warning("report: %s", files.problems[name])
        return None


def _read_mapping(files: RunFiles, name: str, loader: Any) -> dict[str, Any] | None:
    text = _read_text(files, name)
    if text is None:
        return None
    try:
        data = loader(text)
    except (ValueError, yaml.YAMLError) as exc:
        files.problems[name] = f"{name} is not valid: {str(exc).splitlines()[0]}"
        log.warning("report: %s", files.problems[name])
        return None
    if not isinstance(data, dict):
        files.problems[name] = f"{name} does not hold a mapping"
        return None
    return data


def _read_csv(files: RunFiles, name: str) -> tuple[list[dict[str, str]], list[str]] | None:
    text = _read_text(files, name)
    if text is None:
        return None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        return rows, list(reader.fieldnames or [])
    except csv.Error as exc:
        files.problems[name] = f"{name} is not valid CSV: {exc}"
        log.warning("report: %s", files.problems[name])
        return None


def _split_counts_from_csv(files: RunFiles) -> dict[str, dict[str, int]] | None:
    loaded = _read_csv(files, "split.csv")
    if loaded is None:
        return None
    rows, columns = loaded
    if not {"label", "split"} <= set(columns):
        files.problems["split.csv"] = f"split.csv has columns {columns}, expected label and split"
        return None
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        per_split = counts.setdefault(row["label"], {})
        per_split[row["split"]] = per_split.get(row["split"], 0) + 1
    return counts


def _split_counts_from_metrics(metrics: dict[str, Any] | None) -> dict[str, dict[str, int]] | None:
    """metrics.json 'split_counts' as class -> split -> n; accepts split -> class -> n as well."""
    raw = (metrics or {}).get("split_counts")
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, dict) for v in raw.values()):
        return None
    if set(raw) <= set(SPLITS):
        flipped: dict[str, dict[str, int]] = {}
        for split, per_class in raw.items():
            for label, n in per_class.items():
                flipped.setdefault(label, {})[split] = n
        return flipped
    return raw


def read_run(run_dir: Path) -> RunFiles:
    """Read every report input of `run_dir`, recording what is missing instead of failing."""
    files = RunFiles(run_dir=run_dir)
    files.config = _read_mapping(files, "config.yaml", yaml.safe_load)
    files.metrics = _read_mapping(files, "metrics.json", json.loads)
    loaded = _read_csv(files, "history.csv")
    if loaded is not None:
        files.history, files.history_columns = loaded
    files.split_counts = _split_counts_from_csv(files) or _split_counts_from_metrics(files.metrics)
    files.figures = {p.stem: p for p in sorted((run_dir / "figures").glob("*.png"))}
    files.aug_images = sorted((run_dir / "aug_images").glob("*.png"))
    return files


# ---------------------------------------------------------------------------------------------
# Formatting helpers.


def fmt(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals; 'n/a' for None or anything that is not a number."""
    if isinstance(value, bool) or value is None:
        return "n/a"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def fmt_ci(ci: Any) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return f"{fmt(ci[0])} – {fmt(ci[1])}"
    return "n/a"


def fmt_duration(seconds: Any) -> str:
    try:
        total = float(seconds)
    except (TypeError, ValueError):
        return "n/a"
    if total < 60:
        return f"{total:.1f} s"
    minutes, secs = divmod(round(total), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _get(mapping: Any, dotted: str) -> Any:
    node = mapping
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _plain(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _class_order(files: RunFiles) -> list[str]:
    known = [str(c) for c in (files.metrics or {}).get("classes") or []]
    extra = sorted(set(files.split_counts or {}) - set(known))
    return known + extra


def _figures(files: RunFiles, stems: Sequence[str]) -> list[Block]:
    blocks: list[Block] = []
    missing = []
    for stem in stems:
        path = files.figures.get(stem)
        if path is None:
            missing.append(f"{stem}.png")
        else:
            blocks.append(Image(path, f"figures/{path.name}", FIGURE_CAPTIONS.get(stem, stem)))
    if missing:
        blocks.append(Para(("Figures not available: ", *_joined(Code(m) for m in missing), "."), missing=True))
    return blocks


def _joined(parts: Iterable[Inline], sep: str = ", ") -> list[Inline]:
    out: list[Inline] = []
    for part in parts:
        if out:
            out.append(sep)
        out.append(part)
    return out


# ---------------------------------------------------------------------------------------------
# Sections.


def _summary(files: RunFiles) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Run summary")]
    cfg, metrics = files.config, files.metrics or {}
    if cfg is None:
        blocks.append(not_available("Configuration", files.problems.get("config.yaml", "config.yaml missing")))
    rows = [
        ("Data root", _get(cfg, "data.root")),
        ("Backbone", _get(cfg, "model.backbone")),
        ("Weights", _get(cfg, "model.weights")),
        ("Freeze", _get(cfg, "model.freeze")),
        ("Head widths", _get(cfg, "model.head")),
        ("Epochs (configured)", _get(cfg, "train.epochs")),
        ("Epochs (run)", len(files.history) if files.history is not None else None),
        ("Best epoch (val loss)", metrics.get("best_epoch")),
        ("Batch size", _get(cfg, "train.batch_size")),
        ("Optimizer, learning rate", f"{_plain(_get(cfg, 'train.optimizer'))}, {_plain(_get(cfg, 'train.lr'))}"),
        ("LR schedule", _get(cfg, "train.schedule")),
        ("Class weights", _get(cfg, "train.class_weights")),
        ("Split ratios (train/val/test), split seed",
         f"{_plain(_get(cfg, 'data.ratios'))}; {_plain(_get(cfg, 'data.split_seed'))}"),
        ("Training seed", _get(cfg, "train.seed")),
        ("Device", metrics.get("device")),
        ("Wall time", fmt_duration(metrics["wall_seconds"]) if "wall_seconds" in metrics else None),
    ]
    blocks.append(Table(("Setting", "Value"), tuple((k, _plain(v)) for k, v in rows)))
    return blocks


def _dataset(files: RunFiles) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Dataset")]
    counts = files.split_counts
    if not counts:
        blocks.append(not_available("Class counts per split", files.problems.get("split.csv", "no split counts")))
    else:
        totals = dict.fromkeys(SPLITS, 0)
        rows = []
        for label in _class_order(files):
            per_split = counts.get(label, {})
            values = [int(per_split.get(s, 0)) for s in SPLITS]
            for s, v in zip(SPLITS, values, strict=True):
                totals[s] += v
            rows.append((label, *map(str, values), str(sum(values))))
        rows.append(("Total", *(str(totals[s]) for s in SPLITS), str(sum(totals.values()))))
        blocks.append(para("Images per class and split (from ", Code("split.csv"), ")."))
        blocks.append(Table(("Class", *SPLITS, "total"), tuple(rows)))
    blocks.extend(_figures(files, DATASET_FIGURES))
    return blocks


def _comparison(test: dict[str, Any]) -> Para:
    parts = []
    for key, seed in SEED_RESULTS.items():
        value = test.get(key)
        delta = f"{float(value) - seed:+.3f}" if isinstance(value, int | float) else "n/a"
        parts.append(f"{key} {fmt(value)} vs {seed:.3f} ({delta})")
    return para(
        Bold("Against the seed's published test results:"),
        " ",
        "; ".join(parts),
        ". The seed trained on the Kaggle COVID-19 Radiography Database with its own split, so a"
        " different dataset, split or backbone makes this an indicative comparison, not a controlled one.",
    )


def _test_results(files: RunFiles, classes: list[str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Test results")]
    test = (files.metrics or {}).get("test")
    if not isinstance(test, dict):
        why = files.problems.get("metrics.json", "metrics.json has no 'test' entry")
        blocks.append(not_available("Test metrics", why))
        blocks.extend(_figures(files, TEST_FIGURES))
        return blocks
    ci = test.get("ci") or {}
    boot = test.get("bootstrap") or {}
    blocks.append(para(
        f"Evaluated on {_plain(test.get('n'))} test images. Precision and recall use the seed's Keras"
        " semantics (one-hot targets vs probabilities > 0.5, pooled over all classes)."
    ))
    blocks.append(Heading(3, "The seed's table"))
    blocks.append(Table(("Loss", "Accuracy", "Precision", "Recall"), (tuple(fmt(test.get(k)) for k in SEED_RESULTS),)))
    blocks.append(Heading(3, "All metrics"))
    rows = (
        ("Loss (cross-entropy)", fmt(test.get("loss")), "n/a", fmt(SEED_RESULTS["loss"])),
        ("Accuracy", fmt(test.get("accuracy")), fmt_ci(ci.get("accuracy")), fmt(SEED_RESULTS["accuracy"])),
        ("Precision (Keras)", fmt(test.get("precision")), "n/a", fmt(SEED_RESULTS["precision"])),
        ("Recall (Keras)", fmt(test.get("recall")), "n/a", fmt(SEED_RESULTS["recall"])),
        ("Macro-F1", fmt(test.get("macro_f1")), fmt_ci(ci.get("macro_f1")), "n/a"),
        ("ROC-AUC (macro, one vs rest)", fmt(test.get("roc_auc_macro")), "n/a", "n/a"),
        (f"ECE ({_plain(test.get('ece_bins', 15))} bins)", fmt(test.get("ece")), "n/a", "n/a"),
    )
    blocks.append(Table(("Metric", "This run", "95% CI", "Seed (published)"), rows))
    if boot:
        blocks.append(para(
            f"Confidence intervals: {boot.get('method', 'percentile')} bootstrap over test images,"
            f" {_plain(boot.get('n'))} resamples, seed {_plain(boot.get('seed'))}."
        ))
    blocks.append(_comparison(test))

    blocks.append(Heading(3, "Classification report"))
    report = test.get("classification_report")
    blocks.append(Pre(report) if isinstance(report, str) else not_available("Classification report", "not in metrics.json"))

    blocks.append(Heading(3, "Per-class metrics"))
    per_class = test.get("per_class")
    if isinstance(per_class, dict) and per_class:
        rows = tuple(
            (name, fmt(v.get("precision")), fmt(v.get("recall")), fmt(v.get("f1")),
             _plain(v.get("support")), fmt(v.get("roc_auc")))
            for name, v in per_class.items()
            if isinstance(v, dict)
        )
        blocks.append(Table(("Class", "Precision", "Recall", "F1", "Support", "ROC-AUC"), rows))
    else:
        blocks.append(not_available("Per-class metrics", "not in metrics.json"))

    blocks.append(Heading(3, "Confusion matrix"))
    confusion = test.get("confusion")
    names = list(per_class) if isinstance(per_class, dict) and per_class else classes
    if isinstance(confusion, list) and len(confusion) == len(names):
        blocks.append(para("Counts; rows are the true class, columns the predicted class."))
        rows = tuple((name, *(_plain(c) for c in row)) for name, row in zip(names, confusion, strict=True))
        blocks.append(Table(("True \\ Predicted", *names), rows))
    else:
        blocks.append(not_available("Confusion matrix counts", "not in metrics.json"))
    blocks.extend(_figures(files, TEST_FIGURES))
    return blocks


def _history_cell(column: str, value: str) -> str:
    if column == "epoch":
        return value
    if column == "lr":
        try:
            return f"{float(value):.2e}"
        except ValueError:
            return value or "n/a"
    return fmt(value, 1 if column == "seconds" else 4)


def _training(files: RunFiles) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training history")]
    if files.history is None:
        blocks.append(not_available("Training history", files.problems.get("history.csv", "history.csv missing")))
    elif not files.history:
        blocks.append(para("Training history: history.csv holds no epochs."))
    else:
        columns = [c for c in HISTORY_COLUMNS if c in files.history_columns]
        columns += [c for c in files.history_columns if c not in HISTORY_COLUMNS]
        rows = tuple(tuple(_history_cell(c, row.get(c) or "") for c in columns) for row in files.history)
        blocks.append(para("One row per epoch; precision and recall with Keras semantics."))
        blocks.append(Table(tuple(columns), rows))
    blocks.extend(_figures(files, TRAINING_FIGURES))
    return blocks


def _augmented(files: RunFiles) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Augmented training samples")]
    if not files.aug_images:
        blocks.append(not_available("Augmented samples", "aug_images/ holds no PNG files"))
        return blocks
    shown = files.aug_images[:MAX_AUG_IMAGES]
    blocks.append(para(
        f"Training images after the seed's augmentation (showing {len(shown)} of {len(files.aug_images)})."
    ))
    blocks.append(Gallery(tuple(Image(p, f"aug_images/{p.name}", p.stem) for p in shown)))
    return blocks


def _other_figures(files: RunFiles) -> list[Block]:
    known = set(DATASET_FIGURES) | set(TRAINING_FIGURES) | set(TEST_FIGURES)
    others = [stem for stem in files.figures if stem not in known]
    return [Heading(2, "Other figures"), *_figures(files, others)] if others else []


def _limitations() -> list[Block]:
    return [
        Heading(2, "Limitations / not a medical device"),
        Bullets((
            para(Bold("Not a medical device."), " This is research and teaching software. It is not validated"
                 " for clinical use and must not be used to diagnose, triage or treat anyone."),
            para("The test split comes from the same dataset as the training data. These numbers do not"
                 " describe other hospitals, scanners, patient populations or disease prevalences."),
            para("Public COVID-19 X-ray collections mix sources per class; a model can learn the source"
                 " (markers, borders, contrast) instead of the disease. Check the errors, not only the scores."),
            para("The 95% intervals cover resampling of the test images only, not the variation between"
                 " training runs, seeds or data shifts."),
            para("Probabilities are not guaranteed to be calibrated; see the ECE and reliability diagram."),
        )),
    ]


def build_blocks(files: RunFiles) -> tuple[str, list[Block]]:
    """The report's title and content blocks for one run directory."""
    name = _plain(_get(files.config, "name")) if _get(files.config, "name") else files.run_dir.name
    title = f"cxr report: {name}"
    classes = _class_order(files)
    blocks: list[Block] = [Heading(1, title)]
    blocks += _summary(files)
    blocks += _dataset(files)
    blocks += _test_results(files, classes)
    blocks += _training(files)
    blocks += _augmented(files)
    blocks += _other_figures(files)
    blocks += _limitations()
    return title, blocks


# ---------------------------------------------------------------------------------------------
# Markdown.

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def md_escape(text: str) -> str:
    """Escape Markdown syntax characters so text shows literally (intra-word underscores are kept)."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_inline(parts: Sequence[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Code):
            fence = "``" if "`" in part.text else "`"
            out.append(f"{fence}{part.text}{fence}")
        elif isinstance(part, Bold):
            out.append(f"**{md_escape(part.text)}**")
        else:
            out.append(md_escape(part))
    return "".join(out)


def _md_cell(text: str) -> str:
    return md_escape(text.replace("\n", " "))


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {md_escape(block.text)}"
    if isinstance(block, Para):
        return _md_inline(block.parts)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                 "|" + "|".join(" --- " for _ in block.header) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Pre):
        fence = "~~~~" if "```" in block.text else "```"
        return f"{fence}text\n{block.text.rstrip()}\n{fence}"
    if isinstance(block, Image):
        return f"![{md_escape(block.caption)}]({quote(block.rel)})\n\n*{md_escape(block.caption)}*"
    if isinstance(block, Gallery):
        return "".join(
            f'<img src="{html.escape(quote(img.rel))}" width="{block.width}" alt="{html.escape(img.caption)}"/>'
            for img in block.images
        )
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_inline(item.parts)}" for item in block.items)
    raise TypeError(f"unknown block {block!r}")


def render_markdown(blocks: Sequence[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# ---------------------------------------------------------------------------------------------
# HTML (self-contained: inline CSS, images as data URIs).

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1b1f24;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
pre { background: #f6f8fa; padding: 1rem; overflow-x: auto; font-size: .85rem; }
code { background: #f0f2f4; padding: 0 .25rem; border-radius: 3px; }
figure { margin: 1.2rem 0; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { color: #57606a; font-size: .9rem; }
.gallery { display: flex; flex-wrap: wrap; gap: .4rem; }
.gallery img { border: 1px solid #e1e4e8; }
.missing { color: #9a6700; }
"""

_NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?$")


def _data_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return None
    if not data.startswith(PNG_SIGNATURE):
        log.warning("report: %s is not a PNG file; not embedded", path)
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _html_inline(parts: Sequence[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Code):
            out.append(f"<code>{html.escape(part.text)}</code>")
        elif isinstance(part, Bold):
            out.append(f"<strong>{html.escape(part.text)}</strong>")
        else:
            out.append(html.escape(part))
    return "".join(out)


def _html_img(img: Image, width: int | None = None) -> str:
    uri = _data_uri(img.path)
    if uri is None:
        return f'<p class="missing">{html.escape(img.rel)}: not available (not a readable PNG).</p>'
    size = f' width="{width}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(img.caption)}" title="{html.escape(img.caption)}"{size}>'


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-")
        return f'<h{block.level} id="{anchor}">{html.escape(block.text)}</h{block.level}>'
    if isinstance(block, Para):
        cls = ' class="missing"' if block.missing else ""
        return f"<p{cls}>{_html_inline(block.parts)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join(
            "<tr>" + "".join(
                f'<td class="num">{html.escape(c)}</td>' if _NUMBER.match(c) else f"<td>{html.escape(c)}</td>"
                for c in row
            ) + "</tr>"
            for row in block.rows
        )
        return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if isinstance(block, Pre):
        return f"<pre>{html.escape(block.text.rstrip())}</pre>"
    if isinstance(block, Image):
        return f"<figure>{_html_img(block)}<figcaption>{html.escape(block.caption)}</figcaption></figure>"
    if isinstance(block, Gallery):
        return '<div class="gallery">' + "".join(_html_img(i, block.width) for i in block.images) + "</div>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_html_inline(i.parts)}</li>" for i in block.items) + "</ul>"
    raise TypeError(f"unknown block {block!r}")


def render_html(title: str, blocks: Sequence[Block]) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` (figures linked) and `report.html` (figures embedded) into `run_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CxrError(f"run directory not found: {run_dir}")
    files = read_run(run_dir)
    for name, why in files.problems.items():
        log.info("report: %s (%s)", name, why)
    title, blocks = build_blocks(files)
    md_path = run_dir / "report.md"
    html_path = run_dir / "report.html"
    md_path.write_text(render_markdown(blocks), encoding="utf-8")
    html_path.write_text(render_html(title, blocks), encoding="utf-8")
    log.info("wrote %s and %s", md_path, html_path, extra=RESULT)  # `cxr run` prints the path itself
    return md_path, html_path
