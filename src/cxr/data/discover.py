"""Find the images of a dataset and their labels.

Recognised inputs:
- the Kaggle COVID-19 Radiography Database v4: `<root>/[COVID-19_Radiography_Dataset/]<Class>/images/*.png`
  (`masks/` folders and `*.metadata.xlsx` files are ignored);
- its older flat release: `COVID-19/`, `NORMAL/`, `Viral Pneumonia/` holding `COVID-19 (12).png` ...;
- any class-per-folder dataset (`<root>/<class>/**/<image>`);
- a CSV manifest `path,label[,group][,mask][,lung_box]` (paths relative to the CSV's folder, or
  absolute), also multi-label: findings joined by '|' in `label` (NIH) or one 0/1/-1 column per
  finding (CheXpert), see `cxr.data.multilabel`.

Lung masks are found beside the images in the Kaggle v4 layout (`<Class>/masks/<name>.png`, also for
images directly under `<Class>/`), and a manifest may name a `mask` file or `lung_box` boxes per image
(`cxr.data.regions`); `cxr.data.masks` attaches masks from another folder or boxes from a CSV.

Folders that hold a cxr run (a `.cxr-run` marker, `cxr.rundir.RUN_MARKER`) are never searched, so a run
written inside its data folder does not become a class of later runs. A folder that cannot be read
and a symbolic link back into the tree are skipped with a warning.

Class names of the COVID-19 database are normalised to `CANONICAL_CLASSES` whatever their spelling;
other datasets keep their own names. The result is sorted, so it does not depend on the order in
which the filesystem lists files.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cxr.data.multilabel import manifest_labels
from cxr.data.regions import is_box_spec, manifest_region, mask_beside
from cxr.errors import CxrError
from cxr.io import IMAGE_EXTENSIONS
from cxr.rundir import RUN_MARKER

log = logging.getLogger(__name__)

CANONICAL_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia")
KAGGLE_V4_FOLDER = "COVID-19_Radiography_Dataset"
IGNORED_FOLDERS = frozenset({"masks", "__MACOSX"})  # Kaggle lung masks; macOS zip metadata
IMAGES_FOLDER = "images"
OLD_FLAT_NAMES = frozenset({"COVID-19", "NORMAL"})  # folder names only the pre-v4 releases used
MANIFEST_COLUMNS = ("path", "label")
MANIFEST_GROUP = "group"
_MAX_LISTED = 5  # missing manifest files named in an error message

_ALIASES = {
    "covid": "COVID",
    "covid19": "COVID",
    "lungopacity": "Lung_Opacity",
    "normal": "Normal",
    "viralpneumonia": "Viral_Pneumonia",
}


@dataclass(frozen=True)
class Sample:
    """One labelled image; `path` is posix and relative to the dataset root (absolute if outside it)."""

    path: str
    label: str
    group: str | None = None
    mask: str | None = None  # lung region: a mask path (like `path`) or 'box:...' (cxr.data.regions)


@dataclass
class Discovery:
    """What `discover` found: the samples, the class list (index = position) and what it skipped."""

    root: Path
    layout: str
    samples: list[Sample]
    classes: list[str]
    skipped_hidden: int
    skipped_non_image: int
    unknown_folders: list[str]
    task: str = "multiclass"  # multilabel: `classes` are findings, labels are cxr.data.multilabel strings
    renamed: dict[str, str] = field(default_factory=dict)  # folder or manifest name -> class, where they differ

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        counts = dict.fromkeys(self.classes, 0)
        for sample in self.samples:
            counts[sample.label] += 1
        return counts


def normalize_class_name(name: str) -> str:
    """'COVID-19', 'NORMAL', 'Viral Pneumonia', 'lung_opacity' ... -> the canonical name; others unchanged."""
    key = re.sub(r"[\s_\-]+", "", name.strip()).lower()
    return _ALIASES.get(key, name.strip())


def order_classes(names: set[str] | list[str]) -> list[str]:
    """Canonical order for the known classes (which is also their sorted order), else sorted."""
    names = set(names)
    known = [c for c in CANONICAL_CLASSES if c in names]
    return known + sorted(names - set(known))


def discover(path: str | Path, *, task: str = "auto", uncertain: str = "ignore", min_classes: int = 2) -> Discovery:
    """Find the labelled images under a folder (any supported layout) or in a CSV manifest.

    task: auto | multiclass | multilabel (a manifest only; auto detects it, see `cxr.data.multilabel`);
    uncertain: what a CheXpert-style -1 becomes (ignore | zeros | ones); `min_classes`: fewer classes
    are a CxrError (2 to train; an external test set may hold only one; a multi-label set needs one finding).
    """
    path = Path(path)
    if not path.exists():
        raise CxrError(f"data path not found: {path}")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise CxrError(f"data path {path} is a file but not a CSV manifest; give a folder or a .csv file")
        found = _discover_manifest(path, task, uncertain)
    else:
        if task == "multilabel":
            raise CxrError(f"a multi-label dataset needs a CSV manifest (findings per image), not the folder {path}")
        found = _discover_folder(path)
    _check(found, path, min_classes)
    log.info(
        "found %d images in %d classes (%s layout) under %s",
        len(found.samples),
        len(found.classes),
        found.layout,
        found.root,
    )
    return found


def _check(found: Discovery, path: Path, min_classes: int = 2) -> None:
    if not found.samples:
        extra = (
            f"; folders without images: {', '.join(found.unknown_folders)}" if found.unknown_folders else ""
        )
        raise CxrError(f"no images found in {path} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}){extra}")
    if found.task == "multiclass" and len(found.classes) < min_classes:
        raise CxrError(
            f"only one class ({found.classes[0]!r}) found in {path}; a classifier needs at least 2 "
            "(expected one folder per class, or a manifest with 2 or more labels)"
        )


# ------------------------------------------------------------------------------------------ folders


def _list_dir(folder: Path) -> list[os.DirEntry]:
    """The entries of one folder (a seam for tests that shuffle the listing order)."""
    with os.scandir(folder) as it:
        return list(it)


@dataclass
class _Walk:
    files: list[Path]
    hidden: int = 0
    non_image: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)  # (device, inode) of folders walked


def _entries(folder: Path, walk: _Walk) -> list[os.DirEntry]:
    """The entries of a folder not walked before; none (with a warning) for a loop or an unreadable folder."""
    try:
        stat = folder.stat()
        if (stat.st_dev, stat.st_ino) in walk.seen:
            log.warning("skipping %s: a symbolic link back into a folder already searched", folder)
            return []
        walk.seen.add((stat.st_dev, stat.st_ino))
        if (folder / RUN_MARKER).exists():
            log.info("skipping %s: it holds a cxr run, not data", folder)
            return []
        return _list_dir(folder)
    except OSError as exc:
        log.warning("skipping %s: cannot read it (%s)", folder, exc.strerror or exc)
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a broken or looping symbolic link
        return False


def _walk_images(folder: Path, walk: _Walk) -> None:
    """Collect image files below `folder`, skipping hidden entries, masks/ and non-image files."""
    for entry in _entries(folder, walk):
        if entry.name.startswith("."):
            walk.hidden += 1
        elif _is_dir(entry):
            if entry.name not in IGNORED_FOLDERS:
                _walk_images(Path(entry.path), walk)
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            walk.files.append(Path(entry.path))
        else:
            walk.non_image += 1


def _discover_folder(path: Path) -> Discovery:
    root = path / KAGGLE_V4_FOLDER if (path / KAGGLE_V4_FOLDER).is_dir() else path
    walk = _Walk(files=[])
    samples: list[Sample] = []
    unknown: list[str] = []
    raw_names: set[str] = set()
    has_images_subfolders = False
    for entry in _entries(root, walk):
        if entry.name.startswith("."):
            walk.hidden += 1
            continue
        if not _is_dir(entry):
            if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                log.warning("ignoring %s: images directly in the root have no class folder", entry.name)
            continue  # README, *.metadata.xlsx ... beside the class folders
        if entry.name in IGNORED_FOLDERS:
            continue
        class_dir = Path(entry.path)
        images_dir = class_dir / IMAGES_FOLDER
        if images_dir.is_dir():  # Kaggle v4: <Class>/images/ beside <Class>/masks/
            has_images_subfolders = True
            class_dir = images_dir
        before = len(walk.files)
        _walk_images(class_dir, walk)
        if len(walk.files) == before:
            unknown.append(entry.name)
            continue
        raw_names.add(entry.name)
        label = normalize_class_name(entry.name)
        for file in walk.files[before:]:
            mask = mask_beside(file, Path(entry.path), IMAGE_EXTENSIONS)
            samples.append(Sample(_relative(file, root), label, mask=_relative(mask, root) if mask else None))
    if len(raw_names) != len({normalize_class_name(n) for n in raw_names}):
        log.warning("several folders map to the same class and are merged: %s", ", ".join(sorted(raw_names)))
    if has_images_subfolders:
        layout = "kaggle-v4"
    elif raw_names & OLD_FLAT_NAMES:
        layout = "kaggle-flat"
    else:
        layout = "class-folders"
    for name in sorted(unknown):
        log.warning("folder %r holds no images and is not a class", name)
    return Discovery(
        root=root,
        layout=layout,
        samples=sorted(samples, key=lambda s: s.path),
        classes=order_classes({s.label for s in samples}),
        skipped_hidden=walk.hidden,
        skipped_non_image=walk.non_image,
        unknown_folders=sorted(unknown),
        renamed={n: normalize_class_name(n) for n in sorted(raw_names) if normalize_class_name(n) != n},
    )


def _relative(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.as_posix()


# ----------------------------------------------------------------------------------------- manifest


def _discover_manifest(csv_path: Path, task: str = "auto", uncertain: str = "ignore") -> Discovery:
    rows, columns = _read_manifest_rows(csv_path)
    labels, task, findings = manifest_labels(rows, columns, task, uncertain, f"manifest {csv_path}")
    renamed = {}
    for row, label in zip(rows, labels, strict=True):
        row["label"] = label if task == "multilabel" else normalize_class_name(label)
        if row["label"] != label:
            renamed[label] = row["label"]
    root, missing = _manifest_root(csv_path, [row["path"] for row in rows])
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED]) + (" ..." if len(missing) > _MAX_LISTED else "")
        raise CxrError(
            f"manifest {csv_path}: {len(missing)} listed file(s) not found (relative to {root}): {shown}"
        )
    by_path: dict[str, Sample] = {}
    hidden = non_image = 0
    for row in rows:
        raw_path = row["path"]
        file = root / raw_path  # an absolute raw_path stays absolute
        if file.name.startswith("."):
            hidden += 1
            continue
        if file.suffix.lower() not in IMAGE_EXTENSIONS:
            non_image += 1
            continue
        sample = Sample(
            _relative(file, root), row["label"], row.get(MANIFEST_GROUP) or None,
            _manifest_mask(row, root, f"manifest {csv_path} ({raw_path})"),
        )
        previous = by_path.get(sample.path)
        if previous is not None and previous != sample:
            raise CxrError(
                f"manifest {csv_path} lists {raw_path} twice with different labels or groups "
                f"({previous.label!r}/{previous.group!r} and {sample.label!r}/{sample.group!r})"
            )
        by_path[sample.path] = sample
    samples = sorted(by_path.values(), key=lambda s: s.path)
    return Discovery(
        root=root,
        layout="manifest" if task == "multiclass" else "manifest-multilabel",
        samples=samples,
        classes=findings if task == "multilabel" else order_classes({s.label for s in samples}),
        skipped_hidden=hidden,
        skipped_non_image=non_image,
        unknown_folders=[],
        task=task,
        renamed=renamed,
    )


def _read_manifest_rows(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The CSV's rows and columns (header: path, then label[,group] or finding columns), with empty
    paths (and, with a label column, empty labels) refused by line."""
def _manifest_mask(row: dict[str, str], root: Path, where: str) -> str | None:
    """The row's lung region: a mask path (relative to `root` like the images; it must exist) or boxes."""
    region = manifest_region(row, where)
    if region is None or is_box_spec(region):
        return region
    mask = root / region
    if not mask.is_file():
        raise CxrError(f"{where}: mask file not found: {mask}")
    return _relative(mask, root)


def _read_manifest_rows(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The CSV's rows and columns (header: path, then label[,group] or finding columns), with empty
    paths (and, with a label column, empty labels) refused by line."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            for required in MANIFEST_COLUMNS[:1]:  # a label column, or finding columns (multilabel)
                if required not in columns:
                    raise CxrError(
                        f"manifest {csv_path} has no '{required}' column; found columns: "
                        f"{', '.join(columns) or '(none)'}; required header: path,label[,group]"
                    )
            rows = [
                {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)} for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CxrError(f"manifest {csv_path} is not a readable UTF-8 CSV file: {exc}") from None
    for line, row in enumerate(rows, start=2):
        if not row["path"] or ("label" in columns and not row["label"]):
            raise CxrError(
                f"manifest {csv_path} line {line}: empty path or label ({row['path']!r}, {row.get('label')!r})"
            )
    if not rows:
        raise CxrError(f"manifest {csv_path} has a header but no rows")
    return rows, columns


def _manifest_root(csv_path: Path, paths: list[str]) -> tuple[Path, list[str]]:
    """The folder the manifest's relative paths live in: the CSV's own folder, or else a folder
    beside it named like the CSV (`data.csv` next to `data/`). Returns (root, missing paths)."""
    candidates = [csv_path.parent, csv_path.parent / csv_path.stem]
    best: tuple[Path, list[str]] | None = None
    for root in candidates:
        if not root.is_dir():
            continue
        missing = [p for p in paths if not (root / p).is_file()]
        if not missing:
            return root, []
        if best is None or len(missing) < len(best[1]):
            best = (root, missing)
    return best or (csv_path.parent, list(paths))
