"""A corpus of bad inputs, built here: every command answers with one clear line and a non-zero exit
(or skips and names the bad file), never a traceback."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import struct
import subprocess
import sys
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.cli import main
from cxr.data.synthetic import generate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process commands: fast, but for the one run that trains
TINY_RUN = ["--backbone", "efficientnet_lite0", "--weights", "random", "--epochs", "1", "--batch-size", "8",
            "--set", "data.image_size=32", "--set", "data.num_workers=0", "--set", "model.head=[8]",
            "--set", "eval.bootstrap=5", "--set", "eval.aug_samples=1", "--set", "eval.grid_per_class=1"]


def cxr_process(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`cxr ARGS` as a user runs it: a new process (the entry point, its re-exec, its exit status)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "cxr", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def cxr(*args: str) -> subprocess.CompletedProcess:
    """`cxr ARGS` through `cxr.cli.main` in this process (a new process costs seconds of imports; one
    test keeps the real command): its exit status and output, an uncaught exception as its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - what the command would print before dying
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["cxr", *map(str, args)], code, out.getvalue(), err.getvalue())


def refused(result: subprocess.CompletedProcess, *needles: str) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text[-3000:]
    assert result.returncode in (1, 2), (result.returncode, text[-2000:])
    for needle in needles:
        assert needle in text, (needle, text[-2000:])


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims a huge size (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                     + struct.pack(">I", zlib.crc32(chunk)))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = generate_dataset(root / "good", n_per_class=6, size=40, seed=0)
    mixed = generate_dataset(root / "mixed", n_per_class=6, size=40, seed=1)
    (mixed / "COVID" / "zero.png").write_bytes(b"")
    (mixed / "Normal" / "text.png").write_text("not an image at all")
    png_header_only(mixed / "Normal" / "bomb.png", 100_000, 100_000)
    buffer = (mixed / "COVID" / "trunc.jpg")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buffer, quality=90)
    buffer.write_bytes(buffer.read_bytes()[:200])
    (mixed / "Viral_Pneumonia" / "loop").symlink_to(mixed / "Viral_Pneumonia", target_is_directory=True)
    empty = root / "empty"
    empty.mkdir()
    one_class = generate_dataset(root / "one", n_per_class=3, size=32, seed=2, classes=("Normal",))
    manifests = root / "manifests"
    manifests.mkdir()
    images = sorted(good.glob("*/*.png"))

    def manifest(name: str, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
        path = manifests / name
        with path.open("w", newline="", encoding=encoding, errors="replace") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    rows = [[str(p), p.parent.name] for p in images]
    (manifests / "latin1.csv").write_bytes("path,label\n\xe9t\xe9.png,COVID\n".encode("latin-1"))
    garbage_ckpt = root / "garbage.pt"
    garbage_ckpt.write_bytes(os.urandom(256))
    empty_ckpt = root / "empty.pt"
    empty_ckpt.write_bytes(b"")
    import torch

    torch.save([1, 2, 3], root / "list.pt")
    note = root / "notes.txt"
    note.write_text("hello")
    return {
        "good": good, "mixed": mixed, "empty": empty, "one_class": one_class,
        "no_path_column": manifest("no_path.csv", ["file", "label"], [[r[0], r[1]] for r in rows]),
        "missing_file": manifest("missing.csv", ["path", "label"], [*rows, ["/nowhere/x.png", "COVID"]]),
        "conflict": manifest("conflict.csv", ["path", "label"], [*rows, [rows[0][0], "Normal"]]),
        "header_only": manifest("header.csv", ["path", "label"], []),
        "latin1": manifests / "latin1.csv",
        "garbage_ckpt": garbage_ckpt, "empty_ckpt": empty_ckpt, "list_ckpt": root / "list.pt", "note": note,
    }


@pytest.mark.parametrize("case, needle", [
    ("empty", "no images found"),
    ("one_class", "2 or more"),
    ("no_path_column", "no 'path' column"),
    ("missing_file", "not found"),
    ("conflict", "twice with different labels"),
    ("header_only", "no rows"),
    ("latin1", "UTF-8"),
    ("note", "not a CSV manifest"),
])
def test_bad_data_is_one_line_for_inspect_and_run(corpus, tmp_path, case, needle):
    refused(cxr("data", "inspect", corpus[case]), needle)
    refused(cxr("run", "--data", corpus[case], "--out", tmp_path / "run", *TINY_RUN), needle)
    assert not (tmp_path / "run").exists()


def test_the_command_itself_refuses_with_one_line_and_exit_2(corpus):
    result = cxr_process("data", "inspect", corpus["empty"])
    refused(result, "no images found")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_data_and_bad_options(corpus, tmp_path):
    refused(cxr("run", "--data", tmp_path / "nowhere", "--out", tmp_path / "r", *TINY_RUN), "not found")
    refused(cxr("run", "--data", corpus["good"], "--epochs", "0", *TINY_RUN[:4]), "train.epochs must be >= 1")
    refused(cxr("run", "--data", corpus["good"], "--set", "train.lr=-1", *TINY_RUN), "train.lr")
    refused(cxr("run", "--data", corpus["good"], "--set", "nonsense", *TINY_RUN), "KEY=VALUE")
    refused(cxr("run", "--data", corpus["good"], "--weights", "file:/nowhere.pt", "--out", tmp_path / "w"),
            "/nowhere.pt")


@pytest.mark.slow
def test_unreadable_images_are_named_and_the_run_still_completes(corpus, tmp_path):
    inspected = cxr("data", "inspect", corpus["mixed"], "--strict")
    refused(inspected, "zero.png", "text.png", "bomb.png", "trunc.jpg")
    run = cxr("run", "--data", corpus["mixed"], "--out", tmp_path / "run", *TINY_RUN)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "unreadable" in run.stderr and (tmp_path / "run" / "report.html").is_file()


def test_bad_checkpoints_and_images_for_evaluate_predict_explain_export_serve(corpus, tmp_path):
    for name, needle in (("garbage_ckpt", "not"), ("empty_ckpt", "empty"), ("list_ckpt", "not a cxr checkpoint")):
        ckpt = corpus[name]
        refused(cxr("evaluate", "--checkpoint", ckpt, "--data", corpus["good"]), str(ckpt))
        refused(cxr("predict", ckpt, corpus["good"]), str(ckpt), needle)
        refused(cxr("explain", ckpt, next(corpus["good"].glob("*/*.png")), "--out", tmp_path / "x.png"), str(ckpt))
        refused(cxr("export", ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx"), str(ckpt))
        refused(cxr("serve", ckpt, "--port", "8765"), str(ckpt))


def test_outputs_that_cannot_be_written_are_refused_before_any_work(corpus, tmp_path):
    blocked = corpus["note"] / "sub"  # a path below a file: no user, not even root, can create it
    refused(cxr("predict", corpus["garbage_ckpt"], corpus["good"], "--out", blocked / "p.csv"), "cannot write")
    refused(cxr("data", "inspect", corpus["good"], "--json", blocked / "a.json"), "cannot write")
    refused(cxr("data", "split", corpus["good"], "--out", blocked / "split.csv"), "cannot write")
    refused(cxr("run", "--data", corpus["good"], "--out", blocked / "run", *TINY_RUN), "run folder")
