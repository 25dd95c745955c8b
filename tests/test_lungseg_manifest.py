"""bench/lungseg_manifest.py: the lungseg naming rule (MCUCXR_/CHNCXR_, _0 normal, _1 TB) as manifests
that `--external NAME=CSV,label_map=bench/lungseg_labels.yaml` reads, TB mapped to 'abnormal'."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cxr.data.discover import discover
from cxr.data.labelmap import apply_label_map, read_label_map

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_manifests_per_hospital_with_masks_and_the_tb_label_map(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / "lungseg" / folder).mkdir(parents=True)
    names = ["MCUCXR_0001_0.png", "MCUCXR_0002_1.png", "CHNCXR_0001_0.png", "CHNCXR_0002_1.png", "CHNCXR_0003_1.png"]
    for name in names:
        for folder in ("images", "masks"):
            Image.fromarray(np.full((16, 16), 200, np.uint8)).save(tmp_path / "lungseg" / folder / name)
    out = subprocess.run([sys.executable, str(BENCH / "lungseg_manifest.py"), str(tmp_path / "lungseg"),
                          "--out", str(tmp_path / "csv")], capture_output=True, text=True, check=True)
    written = json.loads(out.stdout)
    assert set(written["manifests"]) == {"montgomery", "shenzhen"}
    with open(tmp_path / "csv" / "shenzhen.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["Normal", "TB", "TB"] and all(Path(r["mask"]).is_file() for r in rows)
    assert yaml.safe_load(Path(written["label_map"]).read_text()) == {"Normal": "Normal", "TB": "abnormal"}
    found = discover(tmp_path / "csv" / "shenzhen.csv", min_classes=1)
    mapped, _ = apply_label_map(found, ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"],
                                read_label_map(written["label_map"]))
    assert mapped.classes == ["Normal", "TB"] and all(s.mask for s in mapped.samples)
