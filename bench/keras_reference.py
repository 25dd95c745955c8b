"""The reference pipeline, re-implemented faithfully in TensorFlow/Keras, timed: the speed anchor.

What the seed notebook did (see ../shared/seed/NOTEBOOK_FACTS.md), with random weights because only
speed is compared:

- split the class folders 70/10/20 at random by image with seed 123 (splitfolders); here the split
  folders are made of symbolic links in a temporary directory instead of copies;
- `ImageDataGenerator(rotation_range=5, width_shift_range=0.05, height_shift_range=0.05,
  brightness_range=[0.9, 1.1], zoom_range=[0.9, 1.1], horizontal_flip=True,
  preprocessing_function=resnet50.preprocess_input)` for training, preprocessing only for val/test;
  `flow_from_directory` at 224x224, rgb, batch 32, class_mode categorical, test shuffle=False;
- `ResNet50(weights=None, include_top=False)` frozen, GlobalAveragePooling2D, Dense 2048/512/128
  (ReLU) and Dense 4 softmax; Adam 1e-4, categorical cross-entropy, metrics accuracy, Precision, Recall;
- `model.fit` for --epochs epochs with validation each epoch, then `model.evaluate` on test.

Whole epochs (train + validation) are timed. With fewer epochs than --scale-to, the 20-epoch time is
estimated as first epoch + (scale_to - 1) x mean of the later epochs (the first one includes graph
tracing), plus the test evaluation, and the JSON says so. It runs in its own virtual environment
(bench/setup_keras_env.sh) and re-executes itself with the same GLIBC_TUNABLES that `cxr` uses, so
both sides get the same allocator settings.

    bash bench/setup_keras_env.sh
    ~/.cache/cxr-keras-venv/bin/python bench/keras_reference.py ../shared/data/cxr4-dev --subset 400 --epochs 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

# Same value as cxr.cli.MALLOC_TUNABLES (this script runs outside the cxr environment).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
RATIOS = (0.7, 0.1, 0.2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="class-per-folder data directory (e.g. ../shared/data/cxr4-dev)")
    parser.add_argument("--subset", type=int, default=0, help="use this many images, stratified by class (0: all)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs actually run and timed")
    parser.add_argument("--scale-to", type=int, default=20, help="epochs of the seed recipe the estimate is scaled to")
    parser.add_argument("--batch", type=int, default=32, help="batch size (seed: 32)")
    parser.add_argument("--size", type=int, default=224, help="image side (seed: 224)")
    parser.add_argument("--seed", type=int, default=123, help="split and subset seed (seed: 123)")
    parser.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with GLIBC_TUNABLES set")
    return parser.parse_args(argv)


def reexec_tuned(argv: list[str]) -> None:
    """Run again with the malloc tunables that `cxr` sets for itself, for a fair comparison."""
    if "GLIBC_TUNABLES" in os.environ or platform.libc_ver()[0] != "glibc":
        return
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], env)


def list_images(data: Path) -> dict[str, list[Path]]:
    """Images per class folder (a folder's images may sit in an `images/` subfolder, as in Kaggle v4)."""
    classes: dict[str, list[Path]] = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and "masks" not in f.parts)
        if files:
            classes[folder.name] = files
    if not classes:
        sys.exit(f"no class folders with images in {data}")
    return classes


def make_split_dirs(classes: dict[str, list[Path]], subset: int, seed: int, out: Path) -> dict[str, int]:
    """splitfolders.ratio equivalent: per class, shuffle with `seed` and cut 70/10/20; symlinks, not copies."""
    rng = random.Random(seed)
    total = sum(len(v) for v in classes.values())
    counts = {"train": 0, "val": 0, "test": 0}
    for name, files in classes.items():
        files = list(files)
        rng.shuffle(files)
        if subset:
            files = files[: max(3, round(len(files) * subset / total))]
        n_train = int(len(files) * RATIOS[0])
        n_val = int(len(files) * RATIOS[1])
        parts = {"train": files[:n_train], "val": files[n_train : n_train + n_val], "test": files[n_train + n_val :]}
        for split, chosen in parts.items():
            target = out / split / name
            target.mkdir(parents=True, exist_ok=True)
            for i, src in enumerate(chosen):
                (target / f"{i:06d}{src.suffix.lower()}").symlink_to(src.resolve())
            counts[split] += len(chosen)
    return counts


def build_model(num_classes: int, size: int):
    """The seed's model with random weights: frozen ResNet50 base, GAP, Dense 2048/512/128/classes."""
    import tensorflow as tf

    keras = tf.keras
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(size, size, 3))
    base.trainable = False
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    for width in (2048, 512, 128):
        x = keras.layers.Dense(width, activation="relu")(x)
    out = keras.layers.Dense(num_classes, activation="softmax")(x)
    model = keras.Model(base.input, out)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-4),
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.Precision(), keras.metrics.Recall()],
    )
    return model


def generators(split_dir: Path, size: int, batch: int, seed: int):
    """The seed's ImageDataGenerator flows for train (augmented), val and test (preprocessing only)."""
    import tensorflow as tf

    keras = tf.keras
    preprocess = keras.applications.resnet50.preprocess_input
    image = keras.preprocessing.image
    train_gen = image.ImageDataGenerator(
        rotation_range=5, width_shift_range=0.05, height_shift_range=0.05, brightness_range=[0.9, 1.1],
        zoom_range=[0.9, 1.1], horizontal_flip=True, preprocessing_function=preprocess,
    )
    plain = image.ImageDataGenerator(preprocessing_function=preprocess)
    common = {"target_size": (size, size), "color_mode": "rgb", "batch_size": batch, "class_mode": "categorical"}
    train = train_gen.flow_from_directory(split_dir / "train", shuffle=True, seed=seed, **common)
    val = plain.flow_from_directory(split_dir / "val", shuffle=True, seed=seed, **common)
    test = plain.flow_from_directory(split_dir / "test", shuffle=False, **common)
    return train, val, test


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_malloc_tune:
        reexec_tuned(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    load_start = [round(v, 2) for v in os.getloadavg()]
    classes = list_images(args.data)
    tf.keras.utils.set_random_seed(args.seed)
    # Keras prints progress ("Found N images", epoch lines) to stdout: keep stdout for the JSON.
    with tempfile.TemporaryDirectory(prefix="cxr-keras-split-") as tmp, contextlib.redirect_stdout(sys.stderr):
        counts = make_split_dirs(classes, args.subset, args.seed, Path(tmp))
        train, val, test = generators(Path(tmp), args.size, args.batch, args.seed)
        model = build_model(len(classes), args.size)
        epoch_times: list[float] = []

        class EpochTimer(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001 - Keras callback signature
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001
                epoch_times.append(time.perf_counter() - self.start)

        start = time.perf_counter()
        history = model.fit(train, validation_data=val, epochs=args.epochs, callbacks=[EpochTimer()], verbose=2)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        test_values = model.evaluate(test, verbose=0, return_dict=True)
        test_s = time.perf_counter() - start

    later = epoch_times[1:] or epoch_times
    per_epoch = sum(later) / len(later)
    scaled = epoch_times[0] + (args.scale_to - 1) * per_epoch if args.scale_to > 1 else epoch_times[0]
    result = {
        "implementation": "tensorflow/keras reference (seed pipeline)",
        "tensorflow": tf.__version__, "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
        "data": str(args.data), "subset": args.subset or None, "images": counts, "classes": list(classes),
        "batch": args.batch, "size": args.size, "weights": "random",
        "epochs_run": args.epochs, "epoch_seconds": [round(t, 2) for t in epoch_times],
        "fit_seconds": round(fit_s, 2), "test_eval_seconds": round(test_s, 2),
        "train_images_per_s": round(counts["train"] / per_epoch, 2) if per_epoch else None,
        "scaled_to_epochs": args.scale_to,
        "estimated_seconds": round(scaled + test_s, 1),
        "estimate_note": (
            f"{args.epochs} epoch(s) run; estimate = first epoch + {args.scale_to - 1} x mean of later epochs "
            "(train + validation) + test evaluation" if args.epochs < args.scale_to else "measured, not scaled"
        ),
        "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.history.items()},
        "test": {k: round(float(v), 4) for k, v in test_values.items()},
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "threads": os.cpu_count(),
        "loadavg_start": load_start, "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
