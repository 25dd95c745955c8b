"""cxr.data.discover: every layout, class-name normalisation, skipped files, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data import discover as discover_module
from cxr.data.discover import CANONICAL_CLASSES, Sample, discover, normalize_class_name
from cxr.errors import CxrError


def put_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_kaggle_v4_layout(tmp_path):
    top = tmp_path / "archive"
    base = top / "COVID-19_Radiography_Dataset"
    for folder in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        for i in (1, 2):
            put_image(base / folder / "images" / f"{folder}-{i}.png")
            put_image(base / folder / "masks" / f"{folder}-{i}.png")  # lung masks: not samples
        (base / f"{folder}.metadata.xlsx").write_bytes(b"PK")
    (base / "README.md.txt").write_text("readme")
    found = discover(top)
    assert found.layout == "kaggle-v4"
    assert found.root == base
    assert found.classes == list(CANONICAL_CLASSES)
    assert found.counts() == dict.fromkeys(CANONICAL_CLASSES, 2)
    assert all("/images/" in s.path and "masks" not in s.path for s in found.samples)
    assert Sample("Viral Pneumonia/images/Viral Pneumonia-1.png", "Viral_Pneumonia",
                  mask="Viral Pneumonia/masks/Viral Pneumonia-1.png") in found.samples  # masks ride along
    assert found.skipped_non_image == 0 and found.unknown_folders == []


def test_kaggle_v4_without_wrapper_folder(tmp_path):
    for folder in ("COVID", "Normal"):
        put_image(tmp_path / folder / "images" / "a.png")
        put_image(tmp_path / folder / "masks" / "a.png")
    found = discover(tmp_path)
    assert found.layout == "kaggle-v4" and found.classes == ["COVID", "Normal"]
    assert len(found.samples) == 2


def test_old_flat_layout(tmp_path):
    for folder, n in (("COVID-19", 3), ("NORMAL", 2), ("Viral Pneumonia", 1)):
        for i in range(1, n + 1):
            put_image(tmp_path / folder / f"{folder} ({i}).png")
    found = discover(tmp_path)
    assert found.layout == "kaggle-flat"
    assert found.classes == ["COVID", "Normal", "Viral_Pneumonia"]
    assert found.counts() == {"COVID": 3, "Normal": 2, "Viral_Pneumonia": 1}
    assert found.samples[0] == Sample("COVID-19/COVID-19 (1).png", "COVID")


def test_class_per_folder_keeps_names_and_skips(tmp_path):
    put_image(tmp_path / "cats" / "a.png")
    put_image(tmp_path / "cats" / "nested" / "b.jpg")
    put_image(tmp_path / "dogs" / "c.PNG")
    put_image(tmp_path / "dogs" / ".hidden.png")
    (tmp_path / "dogs" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "dogs" / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    found = discover(tmp_path)
    assert found.layout == "class-folders"
    assert found.classes == ["cats", "dogs"]
    assert [s.path for s in found.samples] == ["cats/a.png", "cats/nested/b.jpg", "dogs/c.PNG"]
    assert found.skipped_hidden == 2
    assert found.skipped_non_image == 2  # notes.txt and docs/readme.md
    assert found.unknown_folders == ["docs", "empty"]


def test_mixed_known_and_other_names_sorted(tmp_path):
    put_image(tmp_path / "pneumonia" / "a.png")
    put_image(tmp_path / "NORMAL" / "a.png")
    put_image(tmp_path / "covid" / "a.png")
    assert discover(tmp_path).classes == ["COVID", "Normal", "pneumonia"]


@pytest.mark.parametrize(
    "raw,canonical",
    [
        ("COVID-19", "COVID"),
        ("covid", "COVID"),
        ("Covid_19", "COVID"),
        ("NORMAL", "Normal"),
        ("Viral Pneumonia", "Viral_Pneumonia"),
        ("viral-pneumonia", "Viral_Pneumonia"),
        ("Lung Opacity", "Lung_Opacity"),
        ("LUNG_OPACITY", "Lung_Opacity"),
        ("Tuberculosis", "Tuberculosis"),
    ],
)
def test_normalize_class_name(raw, canonical):
    assert normalize_class_name(raw) == canonical


def test_manifest_relative_to_csv_folder(tmp_path):
    put_image(tmp_path / "imgs" / "a.png")
    put_image(tmp_path / "imgs" / "b.png")
    put_image(tmp_path / "imgs" / "c.png")
    (tmp_path / "m.csv").write_text(
        "path,label,group\nimgs/b.png,NORMAL,p1\nimgs/a.png,COVID-19,p1\nimgs/c.png,Normal,\n"
    )
    found = discover(tmp_path / "m.csv")
    assert found.layout == "manifest" and found.root == tmp_path
    assert found.samples == [
        Sample("imgs/a.png", "COVID", "p1"),
        Sample("imgs/b.png", "Normal", "p1"),
        Sample("imgs/c.png", "Normal", None),
    ]


def test_manifest_beside_folder_of_same_name(tmp_path):
    put_image(tmp_path / "set" / "x" / "a.png")
    put_image(tmp_path / "set" / "y" / "b.png")
    (tmp_path / "set.csv").write_text("path,label\nx/a.png,x\ny/b.png,y\n")
    found = discover(tmp_path / "set.csv")
    assert found.root == tmp_path / "set"
    assert [s.path for s in found.samples] == ["x/a.png", "y/b.png"]


def test_manifest_absolute_paths(tmp_path):
    put_image(tmp_path / "a" / "1.png")
    put_image(tmp_path / "b" / "2.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text(
        f"path,label\n{tmp_path / 'a' / '1.png'},a\n{tmp_path / 'b' / '2.png'},b\n"
    )
    found = discover(tmp_path / "sub" / "m.csv")
    assert all((found.root / s.path).is_file() for s in found.samples)


def test_manifest_missing_column(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(CxrError, match=r"no 'path' column.*file, label"):
        discover(tmp_path / "m.csv")


def test_manifest_missing_file_named(tmp_path):
    put_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,x\nmissing.png,y\n")
    with pytest.raises(CxrError, match=r"1 listed file\(s\) not found.*missing\.png"):
        discover(tmp_path / "m.csv")


def test_manifest_conflicting_labels(tmp_path):
    put_image(tmp_path / "a.png")
    put_image(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,x\nb.png,y\na.png,y\n")
    with pytest.raises(CxrError, match="a.png twice"):
        discover(tmp_path / "m.csv")


def test_errors(tmp_path):
    with pytest.raises(CxrError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxrError, match="no images found"):
        discover(tmp_path / "empty")
    put_image(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(CxrError, match="only one class"):
        discover(tmp_path / "one")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CxrError, match="not a CSV"):
        discover(tmp_path / "file.txt")


def test_listing_order_does_not_matter(tmp_path, monkeypatch):
    for folder in ("b", "a", "c"):
        for i in range(5):
            put_image(tmp_path / folder / f"{i}.png")
    expected = discover(tmp_path)
    real = discover_module._list_dir
    rng = random.Random(0)

    def shuffled(folder):
        entries = real(folder)
        rng.shuffle(entries)
        return entries

    monkeypatch.setattr(discover_module, "_list_dir", shuffled)
    for _ in range(3):
        assert discover(tmp_path) == expected
