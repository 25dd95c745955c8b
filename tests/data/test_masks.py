"""Lung masks and boxes: the region strings, discovery (v4 layout, manifest columns, --masks, --boxes),
the audit's mask check, split rows, and the dataset's mask, crop and occlusion options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.data.audit import audit
from cxr.data.dataset import SKIPPED, SplitDataset
from cxr.data.discover import discover
from cxr.data.masks import (
    RegionOptions,
    RegionProblem,
    apply_region,
    attach_boxes_csv,
    attach_masks_dir,
    crop_box,
    crop_to_lungs,
    load_region,
    region_mask,
)
from cxr.data.regions import Box, boxes_spec, parse_boxes
from cxr.data.split import make_split
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError
from cxr.rundir import SplitRow, read_split_csv, write_split_csv
from cxr.transforms import Preprocessing


def put(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_boxes_parse_from_blanks_commas_and_several_boxes():
    assert parse_boxes("10 20 30 40") == [Box(10, 20, 30, 40)]
    assert parse_boxes("1,2,3,4; 5 6 7 8") == [Box(1, 2, 3, 4), Box(5, 6, 7, 8)]
    assert parse_boxes(boxes_spec([Box(1, 2, 3.5, 4)])) == [Box(1, 2, 3.5, 4)]
    for bad in ("1 2 3", "a b c d", "10 10 5 20", ""):
        with pytest.raises(CxrError, match="box"):
            parse_boxes(bad)


def test_a_kaggle_mask_is_scaled_to_its_image_and_another_aspect_ratio_is_refused(tmp_path):
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, 32:128] = 255
    put(tmp_path / "m.png", mask)
    lungs = load_region(tmp_path, "m.png", (299, 299))
    assert lungs.shape == (299, 299) and lungs.dtype == bool
    assert abs(lungs.mean() - mask.astype(bool).mean()) < 0.01
    put(tmp_path / "ones.png", (mask > 0).astype(np.uint8))  # a 0/1 mask counts too
    assert load_region(tmp_path, "ones.png", (256, 256)).sum() == (mask > 0).sum()
    with pytest.raises(RegionProblem, match="aspect ratio"):
        load_region(tmp_path, "m.png", (299, 400))
    assert load_region(tmp_path, None, (10, 10)) is None


def test_boxes_become_rectangular_masks_and_the_crop_widens_their_bounding_box():
    lungs = load_region("/", "box:10 20 30 60;50 20 70 60", (100, 100))
    assert lungs.sum() == 2 * 20 * 40 and lungs[30, 15] and not lungs[30, 40]
    assert crop_box(lungs, 0.0) == (10, 20, 70, 60)
    assert crop_box(lungs, 0.1) == (4, 16, 76, 64)
    img = np.arange(100 * 100, dtype=np.int64).reshape(100, 100).astype(np.uint8)
    cropped, mask = apply_region(img, lungs, RegionOptions(crop_margin=0.0))
    assert cropped.shape == (40, 60) and mask.shape == (40, 60)
    np.testing.assert_array_equal(cropped, img[20:60, 10:70])
    assert crop_to_lungs(img, None, None) is img  # no lung crop: unchanged
    np.testing.assert_array_equal(crop_to_lungs(img, 0.0, (10, 20, 70, 60)), img[20:60, 10:70])
    with pytest.raises(CxrError, match="lung crops"):
        crop_to_lungs(img, 0.05, None)
    assert region_mask([(0, 0, 5, 5), Box(5, 5, 10, 10)], (10, 10)).sum() == 50


def test_occlusion_blanks_the_lungs_or_everything_else_with_the_median():
    img = np.full((20, 20), 10, np.uint8)
    img[:, 10:] = 200
    lungs = np.zeros((20, 20), bool)
    lungs[5:15, 12:18] = True
    blanked, _ = apply_region(img, lungs, RegionOptions(occlude="lungs"))
    median = np.uint8(np.median(img))
    assert (blanked[lungs] == median).all() and (blanked[~lungs] == img[~lungs]).all()
    outside, _ = apply_region(img, lungs, RegionOptions(occlude="outside", fill="zero"))
    assert (outside[~lungs] == 0).all() and (outside[lungs] == 200).all()
    with pytest.raises(CxrError, match="occlusion"):
        RegionOptions(occlude="heart")


def test_discovery_finds_v4_masks_beside_images_and_beside_flat_class_folders(tmp_path):
    generate_dataset(tmp_path / "v4", n_per_class=2, size=32, classes=["COVID", "Normal"], masks=True)
    found = discover(tmp_path / "v4")
    assert found.layout == "kaggle-v4"
    assert all(s.mask == s.path.replace("/images/", "/masks/") for s in found.samples)
    flat = tmp_path / "flat"
    for label in ("A", "B"):
        put(flat / label / "x.png", np.zeros((8, 8)))
        put(flat / label / "masks" / "x.png", np.full((8, 8), 255))
    put(flat / "B" / "y.png", np.zeros((8, 8)))  # no mask
    found = discover(flat)
    assert {s.path: s.mask for s in found.samples} == {"A/x.png": "A/masks/x.png", "B/x.png": "B/masks/x.png",
                                                        "B/y.png": None}


def test_manifest_mask_and_lung_box_columns(tmp_path):
    for name in ("a", "b", "c"):
        put(tmp_path / "img" / f"{name}.png", np.zeros((20, 30)))
    put(tmp_path / "masks" / "a.png", np.full((20, 30), 255))
    manifest = tmp_path / "data.csv"
    manifest.write_text("path,label,mask,lung_box\nimg/a.png,COVID,masks/a.png,\nimg/b.png,Normal,,1 2 10 12;15 2 25 12\n"
                        "img/c.png,Normal,,\n")
    found = discover(manifest)
    assert [s.mask for s in found.samples] == ["masks/a.png", "box:1 2 10 12;15 2 25 12", None]
    manifest.write_text("path,label,mask\nimg/a.png,COVID,masks/none.png\nimg/b.png,Normal,\n")
    with pytest.raises(CxrError, match="mask file not found"):
        discover(manifest)


def test_masks_from_a_folder_and_boxes_from_a_csv_are_matched_by_path_or_name(tmp_path):
    data = tmp_path / "data"
    for label in ("A", "B"):
        put(data / label / f"{label.lower()}1.png", np.zeros((10, 10)))
    put(tmp_path / "lungs" / "A" / "a1.png", np.full((10, 10), 255))  # same relative path
    put(tmp_path / "lungs" / "b1.jpg", np.full((10, 10), 255))  # same file name, other format
    found = attach_masks_dir(discover(data), tmp_path / "lungs")
    lungs = (tmp_path / "lungs").resolve()  # outside the data root: absolute paths
    assert [s.mask for s in found.samples] == [(lungs / "A" / "a1.png").as_posix(), (lungs / "b1.jpg").as_posix()]
    assert load_region(found.root, found.samples[0].mask, (10, 10)).all()
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\nA/a1.png,0,0,4,4\nA/a1.png,5,5,9,9\nb1.png,1,1,3,3\n")
    found = attach_boxes_csv(discover(data), boxes)
    assert [s.mask for s in found.samples] == ["box:0 0 4 4;5 5 9 9", "box:1 1 3 3"]
    boxes.write_text("path,x0,y0,x1,y1\nzzz.png,0,0,4,4\n")
    with pytest.raises(CxrError, match="matches an image"):
        attach_boxes_csv(discover(data), boxes)
    boxes.write_text("path,x0,y0\nA/a1.png,0,0\n")
    with pytest.raises(CxrError, match="lacks column"):
        attach_boxes_csv(discover(data), boxes)


def test_the_audit_reports_empty_scaled_and_unusable_masks(tmp_path):
    data = tmp_path / "data"
    for i, label in enumerate(("A", "B")):
        put(data / label / "images" / "x.png", np.full((40, 40), 100 + i))
        put(data / label / "images" / "y.png", np.full((40, 40), 50 + i))
    put(data / "A" / "masks" / "x.png", np.zeros((20, 20)))  # empty
    put(data / "A" / "masks" / "y.png", np.full((20, 20), 255))  # scaled 20 -> 40
    put(data / "B" / "masks" / "x.png", np.full((20, 30), 255))  # another aspect ratio
    report = audit(discover(data), progress=False)
    regions = report.to_json()["lung_regions"]
    assert regions["masks"] == 3 and regions["without_region"] == 1
    assert regions["empty"] == ["A/images/x.png"] and regions["scaled_to_image"] == 2
    assert [u["path"] for u in regions["unusable"]] == ["B/images/x.png"]
    assert any("empty lung mask" in w for w in report.warnings())
    assert any("not usable" in w for w in report.warnings())
    plain = audit(discover(generate_dataset(tmp_path / "plain", n_per_class=1, size=32)), progress=False)
    assert "lung_regions" not in plain.to_json()  # no masks: audit.json as before


def test_split_rows_and_split_csv_carry_the_masks(tmp_path):
    data = generate_dataset(tmp_path / "data", n_per_class=5, size=32, classes=["COVID", "Normal"], masks=True)
    found = discover(data)
    rows, _ = make_split(found, progress=False)
    assert all(r.mask == r.path.replace("/images/", "/masks/") for r in rows)
    write_split_csv(rows, tmp_path / "split.csv")
    assert (tmp_path / "split.csv").read_text().splitlines()[0] == "path,label,split,group,mask"
    assert read_split_csv(tmp_path / "split.csv") == rows
    plain = [SplitRow("a.png", "A", "train", "g")]
    write_split_csv(plain, tmp_path / "plain.csv")
    assert (tmp_path / "plain.csv").read_text() == "path,label,split,group\na.png,A,train,g\n"  # unchanged format
    assert read_split_csv(tmp_path / "plain.csv") == plain


def test_the_dataset_yields_masks_crops_and_blanks_on_request(tmp_path):
    img = np.zeros((40, 60), np.uint8)
    img[10:30, 10:50] = 200
    put(tmp_path / "A" / "a.png", img)
    put(tmp_path / "A" / "n.png", img)
    rows = [SplitRow("A/a.png", "A", "test", "g", "box:10 10 50 30"), SplitRow("A/n.png", "A", "test", "h")]
    pre = Preprocessing("half", 32)
    plain = SplitDataset(tmp_path, rows, ["A", "B"], pre)
    assert len(plain[0]) == 2  # the default (x, y) items are unchanged
    with_masks = SplitDataset(tmp_path, rows, ["A", "B"], pre, with_mask=True)
    x, y, lungs = with_masks[0]
    assert x.shape == (3, 32, 32) and y == 0 and lungs.shape == (32, 32)
    assert abs(float(lungs.mean()) - 20 * 40 / (40 * 60)) < 0.05
    assert float(with_masks[1][2].sum()) == 0  # no region: an all-zero mask
    cropped = SplitDataset(tmp_path, rows, ["A", "B"], pre, regions=RegionOptions(crop_margin=0.0))
    assert (cropped.image(0) == 200).all()  # the crop holds only the bright box
    item = cropped[1]  # a row without a region cannot be cropped: skipped and named
    assert item[1] == SKIPPED and "lung mask or box" in cropped.unreadable()[0][1]
    blanked = SplitDataset(tmp_path, rows[:1], ["A", "B"], pre, regions=RegionOptions(occlude="lungs", fill="zero"))
    assert blanked.image(0).max() == 0
    with pytest.raises(CxrError, match="augment"):
        SplitDataset(tmp_path, rows, ["A", "B"], pre, augment=object(), with_mask=True)  # type: ignore[arg-type]
    assert isinstance(lungs, torch.Tensor)


def test_region_check_json_is_plain_json(tmp_path):
    data = generate_dataset(tmp_path / "data", n_per_class=1, size=32, classes=["COVID", "Normal"], masks=True)
    json.dumps(audit(discover(data), progress=False).to_json())


def test_cxr_data_inspect_reports_the_lung_regions(tmp_path, capsys):
    from cxr.cli import main

    data = generate_dataset(tmp_path / "data", n_per_class=2, size=32, classes=["COVID", "Normal"], masks=True)
    put(data / "Normal" / "masks" / "normal_0001.png", np.zeros((32, 32)))  # an empty mask
    assert main(["data", "inspect", str(data), "--json", str(tmp_path / "audit.json")]) == 0
    out = capsys.readouterr().out
    assert "lung regions: 4 image(s) (4 masks, 0 boxes), 0 without" in out and "1 empty" in out
    assert "1 empty lung mask(s): Normal/images/normal_0001.png" in out
    regions = json.loads((tmp_path / "audit.json").read_text())["lung_regions"]
    assert regions["empty"] == ["Normal/images/normal_0001.png"]
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\ncovid_0000.png,2,2,20,30\n")
    assert main(["data", "inspect", str(data), "--boxes", str(boxes)]) == 0
    assert "(3 masks, 1 boxes)" in capsys.readouterr().out
