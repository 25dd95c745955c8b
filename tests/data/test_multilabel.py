"""Multi-label manifests (NIH '|' labels, CheXpert 0/1/-1 columns), their label strings and targets,
and the iterative stratified, group-aware split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data.discover import discover
from cxr.data.multilabel import NO_FINDING, encode, finding_counts, split_findings, targets
from cxr.data.split import make_split
from cxr.data.split_multilabel import assign_groups_multilabel
from cxr.errors import CxrError
from cxr.rundir import SplitRow


def _manifest(tmp_path: Path, header: list[str], rows: list[list[str]]) -> Path:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for row in rows:
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(folder / row[0])
    path = tmp_path / "images.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_nih_labels_become_findings_in_one_order(tmp_path):
    path = _manifest(tmp_path, ["path", "label", "group"], [
        ["a.png", "Mass|Effusion", "p1"], ["b.png", "No Finding", "p2"], ["c.png", "Effusion", "p2"]])
    found = discover(path)
    assert found.task == "multilabel" and found.classes == ["Effusion", "Mass"]
    assert [s.label for s in found.samples] == ["Effusion|Mass", NO_FINDING, "Effusion"]
    y, known = targets([s.label for s in found.samples], found.classes)
    assert y.tolist() == [[1, 1], [0, 0], [1, 0]] and known.all()
    assert discover(path, task="multiclass").task == "multiclass"  # asked for: 'Mass|Effusion' is one class


def test_chexpert_columns_with_each_uncertain_policy(tmp_path):
    path = _manifest(tmp_path, ["path", "Edema", "Pleural Effusion"], [
        ["a.png", "1", "-1"], ["b.png", "", "0"], ["c.png", "-1.0", "1.0"]])
    ignore = discover(path)
    assert ignore.classes == ["Edema", "Pleural Effusion"]
    labels = [s.label for s in ignore.samples]
    assert labels == ["Edema|Pleural Effusion?", NO_FINDING, "Pleural Effusion|Edema?"]
    y, known = targets(labels, ignore.classes)
    assert y.tolist() == [[1, 0], [0, 0], [0, 1]] and known.tolist() == [[1, 0], [1, 1], [0, 1]]
    assert [s.label for s in discover(path, uncertain="ones").samples][0] == "Edema|Pleural Effusion"
    assert [s.label for s in discover(path, uncertain="zeros").samples][0] == "Edema"


def test_bad_multilabel_manifests_are_named(tmp_path):
    path = _manifest(tmp_path, ["path", "Edema"], [["a.png", "2"]])
    with pytest.raises(CxrError, match="no 'label' column and no 0/1/-1 finding columns"):
        discover(path)
    with pytest.raises(CxrError, match="needs a CSV manifest"):
        discover(tmp_path / "images", task="multilabel")
    with pytest.raises(CxrError, match="finding 'Tumour'"):
        targets(["Tumour"], ["Mass"])


def test_label_strings_round_trip():
    assert encode(["Mass", "Effusion"], ["Edema"], ["Edema", "Effusion", "Mass"]) == "Effusion|Mass|Edema?"
    assert split_findings("No Finding") == [] and encode([], [], ["Mass"]) == NO_FINDING


def test_iterative_stratification_keeps_a_rare_finding_in_every_split():
    rng = np.random.default_rng(3)
    n = 400
    y = (rng.random((n, 4)) < [0.4, 0.2, 0.08, 0.05]).astype(float)  # rarest: ~20 images, ~2 in val
    components = [[i, i + 1] for i in range(0, n, 2)]  # patients with two images each
    assignment = assign_groups_multilabel(components, y, (0.7, 0.1, 0.2), seed=0)
    split_of = np.empty(n, dtype=object)
    for members, split in zip(components, assignment, strict=True):
        split_of[members] = split
    for c in range(4):
        total = y[:, c].sum()
        for split, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
            got = y[split_of == split, c].sum()
            assert got >= 1 and abs(got - share * total) <= max(2, 0.15 * share * total), (c, split)
    assert assignment == assign_groups_multilabel(components, y, (0.7, 0.1, 0.2), seed=0)


def test_make_split_on_a_multilabel_manifest_counts_findings(tmp_path):
    rows = [[f"{i}.png", ["Mass", "Effusion", "Mass|Effusion", "No Finding"][i % 4], f"p{i // 2}"] for i in range(40)]
    found = discover(_manifest(tmp_path, ["path", "label", "group"], rows))
    split_rows, report = make_split(found, seed=1, progress=False)
    assert report["task"] == "multilabel" and set(report["counts"]["test"]) == {"Effusion", "Mass", NO_FINDING}
    groups = {}
    for row in split_rows:
        groups.setdefault(row.group, set()).add(row.split)
    assert all(len(s) == 1 for s in groups.values())
    assert finding_counts([SplitRow("x", "Mass|Effusion?", "val", "g")], ["Effusion", "Mass"])["val"] == {
        "Effusion": 0, "Mass": 1, NO_FINDING: 0}
