"""cxr.metrics.predictions: predictions.csv read back, aligned by path, and refused when unpaired."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cxr.errors import CxrError
from cxr.metrics.compare import compare_prediction_files
from cxr.metrics.predictions import load_paired_predictions, read_predictions_csv

CLASSES = ["COVID", "Normal", "Viral_Pneumonia"]


def write(path: Path, rows: list[tuple[str, str, list[float]]], classes: list[str] = CLASSES) -> Path:
    """A predictions.csv like the study writes: path,true_label,predicted_label,prob_<class>..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "true_label", "predicted_label", *(f"prob_{c}" for c in classes)])
        for name, label, probs in rows:
            writer.writerow([name, label, classes[int(np.argmax(probs))], *probs])
    return path


def rows(n: int, seed: int) -> list[tuple[str, str, list[float]]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 3
        p = rng.dirichlet(np.ones(3))
        p[label] += 1.0
        out.append((f"{CLASSES[label]}/img{i:03d}.png", CLASSES[label], (p / p.sum()).round(6).tolist()))
    return out


def test_read_and_align_by_path(tmp_path: Path) -> None:
    a_rows, b_rows = rows(30, 0), rows(30, 1)
    a = write(tmp_path / "a" / "predictions.csv", a_rows)
    shuffled = [b_rows[i] for i in np.random.default_rng(2).permutation(30)]
    write(tmp_path / "b" / "predictions.csv", shuffled)
    write(tmp_path / "b_sorted.csv", b_rows)
    one = read_predictions_csv(a)
    assert one.classes == CLASSES and one.probs.shape == (30, 3) and one.labels[:3].tolist() == [0, 1, 2]
    pa, pb = load_paired_predictions(tmp_path / "a", tmp_path / "b")  # run folders work too
    assert pb.paths == pa.paths
    np.testing.assert_array_equal(pb.labels, pa.labels)
    shuffled_result = compare_prediction_files(a, tmp_path / "b", n_boot=50)
    sorted_result = compare_prediction_files(a, tmp_path / "b_sorted.csv", n_boot=50)
    for key in ("accuracy", "macro_f1", "roc_auc_macro"):
        assert shuffled_result[key] == sorted_result[key]


def test_different_images_are_refused_naming_both_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", rows(10, 0))
    b = write(tmp_path / "b.csv", rows(10, 1)[:9] + [("other/x.png", "COVID", [1.0, 0.0, 0.0])])
    with pytest.raises(CxrError, match=r"a\.csv and .*b\.csv do not hold the same images.*other/x\.png"):
        load_paired_predictions(a, b)


def test_different_labels_are_refused(tmp_path: Path) -> None:
    a_rows = rows(10, 0)
    b_rows = rows(10, 1)
    b_rows[4] = (b_rows[4][0], "Viral_Pneumonia", b_rows[4][2])
    a, b = write(tmp_path / "a.csv", a_rows), write(tmp_path / "b.csv", b_rows)
    with pytest.raises(CxrError, match=r"label 1 images differently.*img004"):
        load_paired_predictions(a, b)


def test_different_classes_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", rows(6, 0))
    renamed = [(p, lab.replace("Viral_Pneumonia", "Viral"), probs) for p, lab, probs in rows(6, 1)]
    b = write(tmp_path / "b.csv", renamed, classes=["COVID", "Normal", "Viral"])
    with pytest.raises(CxrError, match="different classes"):
        load_paired_predictions(a, b)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("path,label,prob_a\nx,a,1\n", "expected columns"),
        ("path,label,pred,prob_a,prob_b\nx,c,a,1,0\n", r"line 2: true_label 'c' is not a class"),
        ("path,label,pred,prob_a,prob_b\nx,a,a,1,zero\n", "line 2: probabilities must be numbers"),
        ("path,label,pred,prob_a,prob_b\nx,a,a,1,0\nx,b,a,1,0\n", "more than once"),
        ("path,label,pred,prob_a,prob_b\n", "no prediction rows"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CxrError, match=needle) as info:
        read_predictions_csv(path)
    assert "bad.csv" in str(info.value)


def test_missing_file_or_run_folder(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="predictions file not found"):
        read_predictions_csv(tmp_path)


def test_older_run_folders_with_label_and_pred_columns_read_alike(tmp_path: Path) -> None:
    """Runs written before the columns were named true_label/predicted_label (path,label,pred,...) still read."""
    new = write(tmp_path / "new.csv", rows(9, 0))
    old = tmp_path / "old.csv"
    old.write_text(new.read_text().replace("path,true_label,predicted_label,", "path,label,pred,", 1))
    a, b = read_predictions_csv(new), read_predictions_csv(old)
    assert a.classes == b.classes and a.paths == b.paths
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.preds, b.preds)
    load_paired_predictions(new, old)  # an old run compares with a new one


def test_the_study_writes_columns_that_say_which_label_is_which(tmp_path: Path) -> None:
    from cxr.rundir import SplitRow
    from cxr.study.summary import write_predictions_csv

    split = [SplitRow(path=f"img{i}.png", label=CLASSES[i], split="test", group=str(i)) for i in range(3)]
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    path = write_predictions_csv(split, np.array([0, 1, 2]), probs, CLASSES, tmp_path / "predictions.csv")
    with path.open(newline="") as fh:
        written = list(csv.DictReader(fh))
    assert list(written[0])[:3] == ["path", "true_label", "predicted_label"]
    assert [(r["true_label"], r["predicted_label"]) for r in written] == [
        ("COVID", "COVID"), ("Normal", "COVID"), ("Viral_Pneumonia", "Viral_Pneumonia")]
    assert read_predictions_csv(path).preds.tolist() == [0, 0, 2]
