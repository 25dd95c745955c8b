"""What `--engine auto` costs before the first image, against the engines it can pick: prints JSON.

In one process and on one checkpoint, with a fresh engine cache (a temporary CXR_CACHE_DIR), times
`Predictor.use_engine` for: auto on a job of --images images with nothing cached (a miss), torch and
openvino built directly (openvino twice: exporting, then with the export cached), auto on a job of
AUTO_MEASURE_MIN_IMAGES (a miss that measures every engine), then auto on --images (a hit). `auto` should cost what the engine
it picks costs, plus a look-up.

    python bench/auto_cost.py runs/demo/checkpoints/best.pt --images 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--images", type=int, default=300, help="the job size auto is told (default: 300)")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ["CXR_CACHE_DIR"] = tempfile.mkdtemp(prefix="cxr-auto-cost-")  # nothing measured or exported yet

    from cxr.engine.parity import synthetic_inputs
    from cxr.engine.select import AUTO_MEASURE_MIN_IMAGES
    from cxr.predict import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    sample = synthetic_inputs(predictor.preprocessing)
    rows: dict[str, dict[str, object]] = {}

    def timed(name: str, engine: str, images: int) -> None:
        start = time.perf_counter()
        predictor.use_engine(engine, sample=sample, batch_size=args.batch, images=images)
        rows[name] = {"seconds": round(time.perf_counter() - start, 2), "engine": predictor.engine_name}

    timed("auto_miss", "auto", args.images)
    timed("torch", "torch", args.images)
    timed("openvino_first", "openvino", args.images)  # exports the model (cached by its weights digest)
    timed("openvino", "openvino", args.images)  # the export cached: what a user's second run costs
    timed("auto_large_miss", "auto", AUTO_MEASURE_MIN_IMAGES)
    timed("auto_hit", "auto", args.images)
    picked = rows["auto_hit"]["engine"]
    ratio = rows["auto_hit"]["seconds"] / max(rows[picked]["seconds"], 1e-3) if picked in rows else None  # type: ignore[operator]
    print(json.dumps({"images": args.images, "rows": rows, "auto_hit_over_picked": ratio,
                      "loadavg": os.getloadavg()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
