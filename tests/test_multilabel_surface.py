"""Multi-label models outside the study: the synthetic multi-label generator, then a trained
multi-label checkpoint through predict (API and CLI), serve, export, explain and the report."""

from __future__ import annotations

import csv
import json
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr import study
from cxr.checkpoint import load_checkpoint
from cxr.cli import main
from cxr.data.discover import discover
from cxr.data.multilabel import NO_FINDING
from cxr.data.synthetic import DISEASES, SYNTHETIC_MARKER
from cxr.data.synthetic_findings import MANIFEST, generate_multilabel_dataset
from cxr.errors import CxrError
from cxr.predict import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 96


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_generator_writes_an_nih_style_manifest(tmp_path: Path) -> None:
    manifest = generate_multilabel_dataset(tmp_path / "a", n_images=40, size=48, seed=3)
    assert manifest == tmp_path / "a" / MANIFEST and (tmp_path / "a" / SYNTHETIC_MARKER).is_file()
    rows = _read_manifest(manifest)
    assert len(rows) == 40 and set(rows[0]) == {"path", "label", "group"}
    labels = [r["label"] for r in rows]
    findings = [set(label.split("|")) for label in labels if label != NO_FINDING]
    assert NO_FINDING in labels and any(len(f) >= 2 for f in findings)  # none, one and several per image
    assert set().union(*findings) == set(DISEASES)
    assert len({r["group"] for r in rows}) == 20  # two images per patient
    found = discover(manifest)
    assert found.task == "multilabel" and sorted(found.classes) == sorted(DISEASES)
    again = generate_multilabel_dataset(tmp_path / "b", n_images=40, size=48, seed=3)
    assert _read_manifest(again) == rows
    first = rows[0]["path"]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()


def test_findings_are_drawn_where_they_are_labelled(tmp_path: Path) -> None:
    """An image labelled with findings differs from an unlabelled one more than two unlabelled ones do."""
    manifest = generate_multilabel_dataset(tmp_path / "d", n_images=60, size=64, seed=0, prevalence=0.5)
    rows = _read_manifest(manifest)

    def lung_texture(row: dict[str, str]) -> float:
        img = np.asarray(Image.open(manifest.parent / row["path"]), dtype=np.float64)
        return float(np.abs(np.diff(img[16:48, 8:56], axis=1)).mean() + img[16:48, 8:56].mean())

    none = [lung_texture(r) for r in rows if r["label"] == NO_FINDING]
    several = [lung_texture(r) for r in rows if r["label"].count("|") >= 1]
    assert none and several and np.mean(several) > np.mean(none)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"findings": ("Normal",)}, "synthetic findings must be some of"),
    ({"prevalence": 0.0}, "prevalence must be in (0, 1)"),
    ({"n_images": 0}, "n_images must be >= 1"),
])
def test_the_generator_names_a_bad_setting(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(CxrError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate_multilabel_dataset(tmp_path / "x", size=32, **kwargs)


def test_the_demo_replaces_its_own_data_and_keeps_a_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier demo's folder (SYNTHETIC.txt) is replaced whole, so the four-class folders do not stay
    beside the multi-label images; a folder without the marker keeps the user's files."""
    import cxr.study.demo as demo_module

    monkeypatch.setattr(demo_module, "run_study", lambda cfg, data, out, **kw: (cfg, data))
    data = tmp_path / "out" / "data"
    (data / "COVID").mkdir(parents=True)
    (data / "COVID" / "covid_0000.png").write_bytes(b"old")
    (data / SYNTHETIC_MARKER).write_text("generated")
    cfg, source = study.run_demo(tmp_path / "out", n_per_class=2, task="multilabel", progress=False)
    assert cfg.data.task == "multilabel" and source == data / MANIFEST
    assert not (data / "COVID").exists() and len(_read_manifest(source)) == 8
    _, again = study.run_demo(tmp_path / "out", n_per_class=2, force=True, progress=False)  # back to four classes
    assert again == data and not (data / MANIFEST).exists() and len(list(data.glob("*/*.png"))) == 8
    mine = tmp_path / "other" / "data" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    study.run_demo(tmp_path / "other", n_per_class=2, task="multilabel", progress=False)
    assert mine.read_text() == "keep me"
    with pytest.raises(CxrError, match="unknown demo task 'multi'"):
        study.run_demo(tmp_path / "third", task="multi")


# ------------------------------------------------------------------- a trained multi-label model


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's recipe (Lite0 ImageNet, frozen, the feature cache) on synthetic multi-label images."""
    root = tmp_path_factory.mktemp("ml")
    manifest = generate_multilabel_dataset(root / "data", n_images=240, size=SIZE, seed=0)
    cfg = study.demo_config()
    cfg.data.task = "multilabel"
    cfg.data.image_size = SIZE
    cfg.data.num_workers = 0
    cfg.train.feature_views = 1
    cfg.train.epochs = 12
    cfg.train.engine = cfg.eval.engine = "torch"  # the same model and labels on every machine (not auto's pick)
    cfg.eval.bootstrap = 200
    cfg.eval.aug_samples = 2
    cfg.eval.grid_per_class = 1
    return study.run_study(cfg, manifest, root / "run", cache_dir=root / "cache", progress=False).run_dir


@pytest.fixture(scope="module")
def ml_predictor(ml_run: Path) -> Predictor:
    return Predictor.from_checkpoint(ml_run / "checkpoints" / "best.pt", device="cpu", precision="fp32")


def _test_images(run: Path, n: int = 6) -> list[Path]:
    with (run / "split.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    root = Path(json.loads((run / "metrics.json").read_text())["data"]["root"]).parent
    return [root / r["path"] for r in rows[:n]]


@pytest.mark.slow
def test_metrics_have_per_finding_auroc_with_intervals(ml_run: Path) -> None:
    test = json.loads((ml_run / "metrics.json").read_text())["test"]
    assert test["task"] == "multilabel" and test["findings"] == list(DISEASES)
    widths = []
    for name in DISEASES:
        row = test["per_label"][name]
        low, high = row["auroc_ci"]
        assert 0.0 <= low <= row["auroc"] <= high <= 1.0, (name, row)  # [1, 1] for a finding separated in every resample
        assert row["positives"] > 0 and 0.0 <= row["threshold"] <= 1.0
        widths.append(high - low)
    assert max(widths) > 0.01
    assert test["mean_auroc"] > 0.75, test["mean_auroc"]  # the findings are learnt, not guessed
    stored = load_checkpoint(ml_run / "checkpoints" / "best.pt")["extra"]["thresholds"]
    assert stored == pytest.approx(test["thresholds"])


@pytest.mark.slow
def test_predictor_calls_each_finding_at_its_threshold(ml_run: Path, ml_predictor: Predictor) -> None:
    assert ml_predictor.multilabel and ml_predictor.classes == list(DISEASES)
    predictions = ml_predictor.predict(_test_images(ml_run))
    sums = [sum(p.probabilities.values()) for p in predictions]
    assert not np.allclose(sums, 1.0)  # one sigmoid per finding, not a softmax
    for p in predictions:
        present = [c for c, t in zip(ml_predictor.classes, ml_predictor.thresholds, strict=True)
                   if p.probabilities[c] >= t]
        assert p.findings == tuple(present)
        assert p.label == ("|".join(present) or NO_FINDING)
        assert p.to_dict()["findings"] == present and p.confidence == max(p.probabilities.values())
    tta = ml_predictor.predict(_test_images(ml_run, 2), tta=True)
    assert all(0.0 <= v <= 1.0 for p in tta for v in p.probabilities.values())


@pytest.mark.slow
def test_cxr_predict_prints_per_finding_probabilities(ml_run: Path, ml_predictor: Predictor,
                                                      capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    images = _test_images(ml_run, 3)
    checkpoint = str(ml_run / "checkpoints" / "best.pt")
    assert main(["predict", checkpoint, *map(str, images), "--precision", "fp32", "--engine", "torch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert shlex.split(lines[0]) == ["path", "findings", *DISEASES, "in_distribution", "reason"]
    assert shlex.split(lines[1]) == ["(threshold)", "-", *(f"{t:.4f}" for t in ml_predictor.thresholds), "-", "-"]
    expected = ml_predictor.predict(images)
    for line, image, want in zip(lines[2:], images, expected, strict=True):
        cells = shlex.split(line)  # "No Finding" is quoted: one cell
        assert cells[0] == str(image) and cells[1] == want.label
        assert [float(c) for c in cells[2 : 2 + len(DISEASES)]] == pytest.approx([want.probabilities[c] for c in DISEASES], abs=2e-4)
    out = tmp_path / "p.json"
    assert main(["predict", checkpoint, str(images[0]), "--out", str(out), "--precision", "fp32",
                 "--engine", "torch"]) == 0
    doc = json.loads(out.read_text())
    assert doc["task"] == "multilabel" and list(doc["thresholds"]) == list(DISEASES)
    assert doc["predictions"][0]["findings"] == list(expected[0].findings)


@pytest.mark.slow
def test_int8_is_refused_for_a_multilabel_model(ml_predictor: Predictor) -> None:
    with pytest.raises(CxrError, match="this checkpoint is multi-label"):
        ml_predictor.use_engine("openvino-int8")
    assert ml_predictor.engine_name == "torch"


@pytest.mark.slow
def test_serve_answers_per_finding(ml_run: Path, ml_predictor: Predictor) -> None:
    from cxr.serve.app import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    image = _test_images(ml_run, 1)[0]
    with TestClient(create_app(ml_predictor)) as client:
        r = client.post("/v1/predict", files={"file": ("x.png", image.read_bytes(), "image/png")})
        card = client.get("/v1/model").json()
    assert r.status_code == 200, r.text
    body = r.json()
    want = ml_predictor.predict([image])[0]
    assert body["findings"] == list(want.findings) and body["label"] == want.label
    assert list(body["probabilities"]) == list(DISEASES)
    assert card["task"] == "multilabel" and card["thresholds"] == pytest.approx(
        dict(zip(DISEASES, ml_predictor.thresholds, strict=True)))
    assert set(card["test_metrics"]["per_label"]) == set(DISEASES)
    assert card["test_metrics"]["mean_auroc"] > 0.5


@pytest.mark.slow
def test_exports_end_with_one_sigmoid_per_finding(ml_run: Path, tmp_path: Path) -> None:
    from cxr.export import export_onnx, ort_session, read_onnx_metadata

    checkpoint = ml_run / "checkpoints" / "best.pt"
    path = export_onnx(checkpoint, tmp_path / "m.onnx", check=True)
    meta = read_onnx_metadata(path)
    assert meta["task"] == "multilabel" and len(meta["thresholds"]) == len(DISEASES)
    x = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    probs, logits = ort_session(path).run(None, {"input": x})
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)


@pytest.mark.slow
def test_explain_draws_a_heatmap_for_a_finding(ml_run: Path, ml_predictor: Predictor, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from cxr.explain import explain

    image = _test_images(ml_run, 1)[0]
    want = ml_predictor.predict([image])[0]
    result = explain(ml_predictor, image)  # the most probable finding
    assert result.class_name == max(want.probabilities, key=want.probabilities.get)
    assert result.cam.shape == (SIZE, SIZE) and result.cam.max() == pytest.approx(1.0)
    other = explain(ml_predictor, image, "Lung_Opacity")
    assert other.class_name == "Lung_Opacity" and np.isfinite(other.cam).all() and 0.0 <= other.cam.min() <= 1.0
    assert result.prediction.findings == want.findings
    assert list(result.prediction.probabilities.values()) == pytest.approx(list(want.probabilities.values()), abs=1e-4)
    out = tmp_path / "cam.png"
    assert main(["explain", str(ml_run / "checkpoints" / "best.pt"), str(image), "--class", "COVID",
                 "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0 and "heatmap for COVID" in capsys.readouterr().out


@pytest.mark.slow
def test_the_report_shows_findings_not_single_label_sections(ml_run: Path) -> None:
    md = (ml_run / "report.md").read_text()
    results = md.split("## Test results")[1].split("\n## ")[0]
    assert "### Per finding" in results and "Mean over findings" in results
    for name in DISEASES:
        assert f"| {name} |" in results
    assert "The seed's table" not in results and "## Operating points" not in md and "## Error analysis" not in md
    assert "Not fitted for a multi-label run" in md
    assert "Images with each finding per split" in md


def test_parity_sees_a_shift_of_every_logit() -> None:
    """A shift of all logits leaves a softmax unchanged but moves every sigmoid: parity must see it."""
    from cxr.engine.parity import parity_error

    reference = np.array([[0.0, 1.0, -1.0]], dtype=np.float32)
    assert parity_error(reference, reference + 1.0, "logits") > 0.1
    assert parity_error(reference, reference, "logits") == 0.0
    assert torch.allclose(torch.softmax(torch.from_numpy(reference), 1), torch.softmax(torch.from_numpy(reference + 1), 1))
