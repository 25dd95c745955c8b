"""Write CSV manifests of the lungseg sets, one per hospital, for `--external NAME=CSV,label_map=...`.

`lungseg/images/NAME.png` (with `lungseg/masks/NAME.png`) are named `MCUCXR_*` (Montgomery) and
`CHNCXR_*` (Shenzhen), `_0` for a normal X-ray and `_1` for tuberculosis. This script spells that
naming rule out once, as ordinary manifests (`path,label,mask`, absolute paths, labels `Normal` and
`TB`), so cxr needs no rule of its own for these file names. Tuberculosis is none of a COVID model's
classes: score it with `bench/lungseg_labels.yaml` (`TB: abnormal`), which counts it against Normal.

    python bench/lungseg_manifest.py ../shared/data/lungseg --out /tmp/lungseg
    cxr evaluate RUN --external montgomery=/tmp/lungseg/montgomery.csv,label_map=bench/lungseg_labels.yaml
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

SITES = {"montgomery": "MCUCXR_", "shenzhen": "CHNCXR_"}  # set name -> file-name prefix
LABELS = {"0": "Normal", "1": "TB"}  # the last '_' field of the name -> label
LABEL_MAP = Path(__file__).with_name("lungseg_labels.yaml")


def write_manifests(root: Path, out: Path) -> dict[str, Path]:
    """out/<site>.csv for every site of SITES found under root/images; returns {site: path}."""
    images = sorted((root / "images").glob("*.png"))
    if not images:
        raise SystemExit(f"no PNG images under {root / 'images'}")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for site, prefix in SITES.items():
        rows = []
        for image in images:
            suffix = image.stem.rsplit("_", 1)[-1]
            if image.name.startswith(prefix) and suffix in LABELS:
                mask = root / "masks" / image.name
                rows.append([str(image.resolve()), LABELS[suffix], str(mask.resolve()) if mask.is_file() else ""])
        if not rows:
            continue
        path = out / f"{site}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "mask"])
            writer.writerows(rows)
        written[site] = path
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the lungseg folder (images/, masks/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for <site>.csv")
    args = parser.parse_args()
    written = write_manifests(args.root, args.out)
    print(json.dumps({"manifests": {k: str(v) for k, v in written.items()}, "label_map": str(LABEL_MAP)}, indent=2))


if __name__ == "__main__":
    main()
