"""Label maps of external sets: built-in aliases, the user's YAML (with ignore), clear errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from cxr.data.discover import discover
from cxr.data.labelmap import apply_label_map, read_label_map, resolve_name
from cxr.errors import CxrError

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]


def folders(root, names):
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(root / name / "a.png")
    return root


def test_names_resolve_to_classes_aliases_and_the_user_map():
    assert resolve_name("normal", CLASSES).target == "Normal"
    assert resolve_name("No_Finding", CLASSES).how == "alias"
    assert resolve_name("No Finding", CLASSES).target == "Normal"
    assert resolve_name("PNEUMONIA", CLASSES).how == "approximate alias"
    user = {"PNEUMONIA": "Lung_Opacity", "other": "ignore"}
    assert resolve_name("Pneumonia", CLASSES, user).target == "Lung_Opacity"
    assert resolve_name("Other", CLASSES, user).target is None


def test_an_unmapped_name_names_itself_the_classes_and_the_closest_one():
    with pytest.raises(CxrError) as info:
        resolve_name("Viral Pneumonnia X", CLASSES)
    text = str(info.value)
    assert "'Viral Pneumonnia X'" in text and "COVID, Lung_Opacity, Normal, Viral_Pneumonia" in text
    assert "did you mean 'Viral_Pneumonia'" in text and "--label-map" in text
    with pytest.raises(CxrError, match="not a class of the model"):
        resolve_name("x", CLASSES, {"x": "Pneumonia"})
    with pytest.raises(CxrError, match="No_Finding"):
        resolve_name("No_Finding", ["COVID", "Other"])  # the alias needs a Normal class


def test_apply_label_map_drops_ignored_images_and_logs_every_mapping(tmp_path, caplog):
    root = folders(tmp_path / "ext", ["COVID-19", "No_Finding", "Tuberculosis"])
    (tmp_path / "map.yaml").write_text("Tuberculosis: ignore\nCOVID-19: COVID\n")
    found = discover(root, min_classes=1)
    with caplog.at_level(logging.INFO, logger="cxr.data.labelmap"):
        mapped, mappings = apply_label_map(found, CLASSES, read_label_map(tmp_path / "map.yaml"), where="set X")
    assert mapped.classes == ["COVID", "Normal"] and len(mapped.samples) == 2
    assert {m.name: m.target for m in mappings} == {"COVID": "COVID", "No_Finding": "Normal", "Tuberculosis": None}
    text = caplog.text
    assert "'COVID-19' (read as 'COVID') -> COVID (label map)" in text
    assert "'No_Finding' -> Normal (alias)" in text and "'Tuberculosis' -> ignored (label map)" in text
    (tmp_path / "map.yaml").write_text("Tuberculosis: ignore\nCOVID-19: ignore\nNo_Finding: ignore\n")
    with pytest.raises(CxrError, match="every image was ignored"):
        apply_label_map(found, CLASSES, read_label_map(tmp_path / "map.yaml"))


def test_bad_label_map_files_are_clear_errors(tmp_path):
    with pytest.raises(CxrError, match="not found"):
        read_label_map(tmp_path / "none.yaml")
    (tmp_path / "m.yaml").write_text("- a\n- b\n")
    with pytest.raises(CxrError, match="must be a mapping"):
        read_label_map(tmp_path / "m.yaml")
    (tmp_path / "m.yaml").write_text("a: [1, 2]\n")
    with pytest.raises(CxrError, match="'a'"):
        read_label_map(tmp_path / "m.yaml")


def test_an_external_set_may_hold_one_class_but_training_data_may_not(tmp_path):
    root = folders(tmp_path / "one", ["NORMAL"])
    assert discover(root, min_classes=1).classes == ["Normal"]
    with pytest.raises(CxrError, match="only one class"):
        discover(root)


def test_a_foreign_abnormal_class_keeps_its_name_after_the_model_classes(tmp_path):
    found = discover(folders(tmp_path, ["TB", "NORMAL"]), min_classes=1)
    mapped, mappings = apply_label_map(found, CLASSES, {"tb": "Abnormal"})
    assert mapped.classes == ["Normal", "TB"]
    assert sorted(s.label for s in mapped.samples) == ["Normal", "TB"]
    tb = next(m for m in mappings if m.name == "TB")
    assert tb.abnormal and tb.target == "TB" and "abnormal" in tb.how
    with pytest.raises(CxrError, match="'abnormal' is for classes the model does not have"):
        resolve_name("COVID", CLASSES, {"COVID": "abnormal"})
