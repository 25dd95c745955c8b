"""The run-folder contract: every path of a run directory, its table formats, and safe writers/readers.

A study writes one folder (`cxr run`, `cxr demo`, `cxr train`, `cxr evaluate --out`); everything
that reads or writes it (the study, the trainer's checkpointer, the report, `evaluate`, `serve`)
takes the names and formats from here, so they cannot drift apart. Torch-free: the report reads
run folders on machines without PyTorch.

Writers are atomic (a temporary file in the same folder, flushed and fsynced, then renamed over the
target), so a reader never sees half a file and a crash leaves the previous version. Files get the
usual mode (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import csv
import fcntl
import functools
import io
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cxr.errors import CxrError

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("path", "label", "split", "group")
MASK_COLUMN = "mask"  # written after SPLIT_COLUMNS when any row has a lung region (cxr.data.regions)
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "macro_f1")
HISTORY_COLUMNS = (
    "epoch", "lr",
    *(f"train_{m}" for m in METRIC_NAMES),
    *(f"val_{m}" for m in METRIC_NAMES),
    "seconds",
)
PHASE_COLUMN = "phase"  # written after HISTORY_COLUMNS: 1 = the head (seed recipe), 2 = fine-tuning
# written after PHASE_COLUMN when the rows have them: a multi-label run's validation mean AUROC (its selection metric)
OPTIONAL_HISTORY_COLUMNS = ("val_mean_auroc",)
INT_HISTORY_COLUMNS = ("epoch", PHASE_COLUMN)

RUN_MARKER = ".cxr-run"  # in every run folder: the writer's lock, and a sign to discovery that this is no data
SplitCounts = dict[str, dict[str, int]]  # split -> class -> images: the one orientation used everywhere


class RunDir:
    """The paths of one run folder. Looking at them creates nothing."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @property
    def config(self) -> Path:
        """config.yaml: the fully resolved configuration."""
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        """split.csv: path,label,split,group."""
        return self.root / "split.csv"

    @property
    def audit(self) -> Path:
        """audit.json: counts, unreadable files, duplicate groups."""
        return self.root / "audit.json"

    @property
    def checkpoints(self) -> Path:
        """checkpoints: folder of last.pt and best.pt."""
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """checkpoints/last.pt: the latest epoch, to resume from."""
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        """checkpoints/best.pt: the epoch of the lowest val loss."""
        return self.root / "checkpoints" / "best.pt"

    @property
    def history(self) -> Path:
        """history.csv: one row per epoch (HISTORY_COLUMNS, PHASE_COLUMN)."""
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:
        """metrics.json: the run summary and test metrics."""
        return self.root / "metrics.json"

    @property
    def predictions(self) -> Path:
        """predictions.csv: path,true_label,predicted_label,prob_<class>... per test image (older runs: path,label,pred,...)."""
        return self.root / "predictions.csv"

    @property
    def figures(self) -> Path:
        """figures: every figure."""
        return self.root / "figures"

    @property
    def aug_images(self) -> Path:
        """aug_images: augmented training samples."""
        return self.root / "aug_images"

    @property
    def report_md(self) -> Path:
        """report.md: the report, figures linked."""
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        """report.html: the report, self-contained."""
        return self.root / "report.html"

    @property
    def marker(self) -> Path:
        """.cxr-run: the lock file of the process writing the run (and a marker discovery skips)."""
        return self.root / RUN_MARKER

    @property
    def provenance(self) -> Path:
        """provenance.json: software, machine and data of every start of the run (resumes included)."""
        return self.root / "provenance.json"

    @property
    def split_report(self) -> Path:
        """split_report.json: how the split was made, what it excluded, so a resumed run still knows."""
        return self.root / "split_report.json"

    @property
    def log(self) -> Path:
        """log.txt: the run's log."""
        return self.root / "log.txt"

    @property
    def tensorboard(self) -> Path:
        """tensorboard: TensorBoard event files (with --track tensorboard)."""
        return self.root / "tensorboard"

    @property
    def tracking(self) -> Path:
        """tracking.json: the experiment tracker's run (backend, URI, run id), so a resume continues it."""
        return self.root / "tracking.json"

    def artefacts(self) -> list[Path]:
        """The files and folders of a run that exist here (what protects a folder from being reused)."""
        candidates = (self.config, self.split, self.audit, self.last, self.best, self.history, self.metrics,
                      self.predictions, self.report_md, self.report_html, self.provenance, self.split_report)
        return [p for p in candidates if p.exists()]

    def outputs(self) -> list[Path]:
        """Every file and folder a study writes here, present or not (what `clear` removes)."""
        return [self.checkpoints, self.history, self.metrics, self.predictions, self.split, self.audit,
                self.split_report, self.provenance, self.config, self.report_md, self.report_html, self.figures,
                self.aug_images, self.log, self.tensorboard, self.tracking]

    def clear(self) -> list[Path]:
        """Delete the study's outputs (`outputs`), never anything else in the folder; returns what was deleted."""
        removed = [p for p in self.outputs() if p.exists() or p.is_symlink()]
        for path in removed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return removed

    @staticmethod
    def of_checkpoint(ckpt: str | Path) -> RunDir:
        """The run folder a checkpoint at `<run>/checkpoints/<name>.pt` belongs to."""
        return RunDir(Path(ckpt).resolve().parent.parent)


class RunLock:
    """An exclusive lock on a run folder (`fcntl.flock` on its marker file), held by the writing process.

    A second `cxr run` on the same folder fails at `acquire` with a message naming the holder, instead
    of mixing two runs in one folder. The lock goes with the process (also when it is killed).
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.run.marker, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise CxrError(
                f"{self.run.root} is in use by another cxr process ({holder}); wait for it to finish, "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------------ writers


@functools.cache
def _file_mode() -> int:
    """0666 minus the process umask (read once: setting it to read it is not thread-safe)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(binary file)` on a temporary file beside `path`, fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | Path, data: Any) -> Path:
    """Write indented JSON (numpy values and paths converted) atomically."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV with '\\n' line ends atomically, so equal tables give identical bytes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------ readers


def read_json(path: str | Path) -> Any:
    """Parsed JSON; a CxrError names a missing or invalid file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CxrError(f"{path} is not readable JSON ({exc})") from None


# ------------------------------------------------------------------------------------------ split.csv


@dataclass(frozen=True)
class SplitRow:
    """One image of the split; `path` is relative to the data root, `group` a stable id."""

    path: str
    label: str
    split: str
    group: str
    mask: str | None = None  # lung mask path or 'box:...' lung boxes (cxr.data.regions), when known


def write_split_csv(rows: Sequence[SplitRow], path: str | Path) -> Path:
    """Write `path,label,split,group` (and `mask` when any row has one); equal splits give identical bytes."""
    if any(r.mask for r in rows):
        return write_csv(path, (*SPLIT_COLUMNS, MASK_COLUMN),
                         ((r.path, r.label, r.split, r.group, r.mask or "") for r in rows))
    return write_csv(path, SPLIT_COLUMNS, ((r.path, r.label, r.split, r.group) for r in rows))


def read_split_csv(path: str | Path) -> list[SplitRow]:
    """Read a split.csv, refusing missing columns or unknown split names by line."""
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"split file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in SPLIT_COLUMNS if c not in columns]
        if missing:
            raise CxrError(
                f"split file {path} lacks column(s) {', '.join(missing)}; "
                f"found {', '.join(columns) or '(none)'}; expected {','.join(SPLIT_COLUMNS)}"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            if raw["split"] not in SPLITS:
                raise CxrError(
                    f"split file {path} line {line}: split {raw['split']!r} is not one of {', '.join(SPLITS)}"
                )
            rows.append(SplitRow(raw["path"], raw["label"], raw["split"], raw["group"], raw.get(MASK_COLUMN) or None))
    return rows


def split_counts(rows: Iterable[SplitRow], classes: Sequence[str] = ()) -> SplitCounts:
    """split -> class -> images, every split and every given class present (zeros included)."""
    counts: SplitCounts = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for row in rows:
        per_class = counts.setdefault(row.split, {})
        per_class[row.label] = per_class.get(row.label, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------ history.csv


def write_history_csv(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the per-epoch rows (HISTORY_COLUMNS, then PHASE_COLUMN; phase 1 where a row has none; then
    the OPTIONAL_HISTORY_COLUMNS some row has)."""
    optional = tuple(c for c in OPTIONAL_HISTORY_COLUMNS if any(c in row for row in history))
    columns = (*HISTORY_COLUMNS, PHASE_COLUMN, *optional)
    rows = ([row.get(k, 1 if k == PHASE_COLUMN else None) for k in columns] for row in history)
    return write_csv(path, columns, ([("" if v is None else v) for v in row] for row in rows))


def parse_history_rows(rows: Iterable[Mapping[str, str]]) -> list[dict[str, float]]:
    """History rows as numbers (epoch and phase as int); empty cells are skipped."""
    out = []
    for row in rows:
        parsed: dict[str, float] = {}
        for key, value in row.items():
            if key is None or value in (None, ""):
                continue
            parsed[key] = int(float(value)) if key in INT_HISTORY_COLUMNS else float(value)
        out.append(parsed)
    return out


def read_history_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a history.csv as numbers (epoch and phase as int)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return parse_history_rows(csv.DictReader(fh))
