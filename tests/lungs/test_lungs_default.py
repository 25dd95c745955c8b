"""The packaged lung model: its file matches its card, it loads offline, and its QC tells X-rays from other pictures."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cxr.hashing import file_sha256
from cxr.lungs.segmenter import LungSegmenter
from cxr.lungs.store import default_model_path, read_metadata

MAX_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # offline: nothing may be fetched
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(name, "1")
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("no-hub")))
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("no-torch-hub")))
        yield LungSegmenter.default(engine="torch", threads=1)


def test_the_shipped_file_matches_its_model_card():
    path = default_model_path()
    assert path.is_file() and path.stat().st_size <= MAX_BYTES
    card = (path.parent / "MODEL_CARD.md").read_text()
    digests = re.findall(r"sha256[^0-9a-f]*([0-9a-f]{64})", card)
    assert digests and digests[0] == file_sha256(path), "re-write the digest in MODEL_CARD.md after retraining"
    assert path.name in card and "CC BY-NC-SA 4.0" in card
    assert read_metadata(path)["format"] == "cxr-lungs/1"


def test_the_default_model_loads_offline_with_its_digest(default):
    assert default.digest == file_sha256(default_model_path())
    assert default.info.get("trained_on", 0) > 500  # the trained model, not a placeholder


def test_blank_and_photo_like_pictures_are_suspect_and_a_drawn_xray_is_ok(default):
    from cxr.data.synthetic import make_image_and_mask

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    photo = (127 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 25, (240, 320))).clip(0, 255)
    xray, mask = make_image_and_mask("Normal", np.random.default_rng(1), 256)
    blank, photo_r, xray_r = default.segment([np.zeros((200, 180), np.uint8), photo.astype(np.uint8), xray])
    assert blank.qc.flag == "suspect" and photo_r.qc.flag == "suspect"
    assert xray_r.qc.flag == "ok", xray_r.qc
    overlap = (xray_r.mask & (mask > 0)).sum() / max((mask > 0).sum(), 1)
    assert overlap > 0.6 and xray_r.mask.shape == (256, 256)


@pytest.mark.shared_data
def test_the_default_model_draws_real_lungs(default, lungseg):
    from cxr.lungs.evaluate import evaluate
    from cxr.lungs.pairs import find_pairs, split_pairs

    held = split_pairs(find_pairs(lungseg / "images", lungseg / "masks"), seed=0)[1]  # the card's hold-out
    some = held[:: max(1, len(held) // 8)][:8]
    evaluation, _ = evaluate(default, some, n_boot=50, progress=False)
    assert evaluation.summary["dice"]["mean"] > 0.9
    assert evaluation.summary["suspect"]["n"] == 0
