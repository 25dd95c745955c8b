"""`cxr data inspect|split|augment-samples` through `cxr.cli.main`, as a user runs them."""

from __future__ import annotations

import csv
import json
import struct
import sys
import types
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.cli import main
from cxr.data.discover import normalize_class_name

BROKEN = ("truncated.png", "zero.png", "x.png", "bomb.png")


def distinct_image(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((32, 32), Image.Resampling.BICUBIC))


def make_dataset(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(distinct_image(rng)).save(root / label / f"{i}.png")
    return root


def add_broken_files(folder: Path) -> None:
    """The four bad inputs of issue 2: truncated PNG, zero bytes, text named .png, 50000x50000 header."""
    data = (next(folder.glob("*.png"))).read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "x.png").write_text("this is text\n")

    def chunk(tag: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    (folder / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def broken_dataset(tmp_path) -> Path:
    root = make_dataset(tmp_path / "data", {"COVID": 4, "Normal": 4})
    add_broken_files(root / "Normal")
    return root


def test_inspect_strict_names_each_bad_file_and_exits_1(broken_dataset, tmp_path, capsys):
    code = main(["data", "inspect", str(broken_dataset), "--strict", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 1
    for name in BROKEN:
        assert f"Normal/{name}" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["classes"] == {"COVID": 4, "Normal": 8}
    assert {u["path"] for u in report["unreadable"]} == {f"Normal/{n}" for n in BROKEN}
    reasons = {u["path"]: u["reason"] for u in report["unreadable"]}
    assert "truncated" in reasons["Normal/truncated.png"]
    assert "empty" in reasons["Normal/zero.png"]
    assert "not a recognised image" in reasons["Normal/x.png"]
    assert "megapixel" in reasons["Normal/bomb.png"]
    for key in ("duplicate_groups", "near_duplicate_groups"):
        assert key in report


def test_inspect_without_strict_warns_and_exits_0(broken_dataset, capsys):
    assert main(["data", "inspect", str(broken_dataset)]) == 0
    out = capsys.readouterr().out
    assert "warnings:" in out and "4 unreadable file(s)" in out


def test_inspect_table_and_figures(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", {"COVID-19": 3, "NORMAL": 2})
    Image.fromarray(np.zeros((20, 30), np.uint8)).convert("RGB").save(root / "NORMAL" / "rgb.png")
    code = main(["data", "inspect", str(root), "--figures", str(tmp_path / "figs"), "--grid-per-class", "2"])
    out = capsys.readouterr().out
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["COVID"][1:3] == ["3", "3"] and lines["Normal"][1:3] == ["3", "3"]
    assert "30x20 (1)" in out and "RGB (1)" in out
    for name in ("bar_chart.png", "pie_chart.png", "dataset_images.png"):
        with Image.open(tmp_path / "figs" / name) as im:
            assert im.width > 300 and im.height > 200


def test_split_twice_identical_and_stratified(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", {"a": 20, "b": 13})
    for name in ("s1.csv", "s2.csv"):
        assert main(["data", "split", str(root), "--out", str(tmp_path / name), "--seed", "5"]) == 0
    assert (tmp_path / "s1.csv").read_bytes() == (tmp_path / "s2.csv").read_bytes()
    with (tmp_path / "s1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "split", "group"]
    counts = Counter((r["label"], r["split"]) for r in rows)
    assert (counts["a", "train"], counts["a", "val"], counts["a", "test"]) == (14, 2, 4)
    assert (counts["b", "train"], counts["b", "val"], counts["b", "test"]) == (9, 1, 3)
    assert "split written to" in capsys.readouterr().out


def test_split_bad_ratios_one_line_error(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    code = main(
        ["data", "split", str(root), "--out", str(tmp_path / "s.csv"), "--ratios", "0.5", "0.6", "0.1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "0.5, 0.6, 0.1" in err and "Traceback" not in err
    assert not (tmp_path / "s.csv").exists()


def test_missing_folder_is_user_error(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_augment_samples_calls_the_writer(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    calls = []

    def fake_writer(root, samples, n, out_dir, cfg, size=224, seed=0):
        calls.append((root, samples, n, out_dir, cfg, size, seed))
        return [out_dir / f"aug_{i}.png" for i in range(n)]

    monkeypatch.setitem(
        sys.modules, "cxr.data.samples", types.SimpleNamespace(write_augmented_samples=fake_writer)
    )
    code = main(
        ["data", "augment-samples", str(root), "--n", "4", "--out", str(tmp_path / "aug"), "--seed", "9"]
    )
    assert code == 0
    (got_root, samples, n, out_dir, cfg, size, seed) = calls[0]
    assert got_root == root and len(samples) == 6 and n == 4 and out_dir == tmp_path / "aug"
    assert seed == 9 and size == 224 and cfg.rotation == 5.0
    assert "4 augmented images" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- real data


def manifest_of(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data.parent / f"{shared_data.name}.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.shared_data
def test_shared_data_inspect_counts_match_manifest(shared_data, tmp_path):
    assert main(["data", "inspect", str(shared_data), "--json", str(tmp_path / "r.json"), "-q"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    expected = Counter(normalize_class_name(row["label"]) for row in manifest_of(shared_data))
    assert report["classes"] == dict(expected)
    assert report["unreadable"] == []


@pytest.mark.slow
@pytest.mark.shared_data
def test_shared_data_split_keeps_manifest_groups(shared_data, tmp_path):
    manifest = shared_data.parent / f"{shared_data.name}.csv"
    assert main(["data", "split", str(manifest), "--out", str(tmp_path / "s.csv"), "-q"]) == 0
    with (tmp_path / "s.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    group_of = {row["path"]: row["group"] for row in manifest_of(shared_data)}
    splits_of_group = defaultdict(set)
    for row in rows:
        splits_of_group[group_of[row["path"]]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of_group.values())
    per_class = Counter(row["label"] for row in rows)
    counts = Counter((row["label"], row["split"]) for row in rows)
    for label, n in per_class.items():
        for split, ratio in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
            assert abs(counts[label, split] - n * ratio) <= 1
