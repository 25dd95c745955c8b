"""The public Python API a notebook uses: `import cxr` is cheap, a study returns a readable result,
a predictor takes paths, PIL images, arrays and lists of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cxr
from cxr.data.synthetic import generate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_import_cxr_loads_no_torch_until_a_function_needs_it():
    code = "import sys, cxr; assert 'torch' not in sys.modules; cxr.load_config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert {"run_study", "train", "evaluate", "Predictor", "load_config", "StudyResult"} <= set(dir(cxr))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cxr.nope  # noqa: B018


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    data = generate_dataset(tmp_path_factory.mktemp("api") / "data", n_per_class=6, size=40, seed=3)
    cfg = cxr.load_config(None, {
        "data.image_size": 32, "data.num_workers": 0, "model.backbone": "efficientnet_lite0", "model.weights": "random",
        "model.head": [8],
        "train.epochs": 1, "train.batch_size": 8, "eval.bootstrap": 10, "eval.aug_samples": 1,
        "eval.grid_per_class": 1,
    })
    return data, cxr.run_study(cfg, data, tmp_path_factory.mktemp("runs") / "api", progress=False)


@pytest.mark.slow
def test_run_study_returns_the_metrics_history_and_paths(study):
    data, result = study
    assert isinstance(result, cxr.StudyResult)
    assert result.test["n"] > 0 and 0.0 <= result.test["accuracy"] <= 1.0
    assert [row["epoch"] for row in result.history] == [1]
    assert result.checkpoint.is_file() and result.report is not None and result.report.is_file()
    assert (result / "metrics.json").is_file() and Path(result) == result.run_dir  # path-like
    text = repr(result)
    assert f"test accuracy={result.test['accuracy']:.3f}" in text and "epochs=1" in text
    assert cxr.StudyResult.read(result.run_dir).test == result.test
    assert cxr.evaluate(result.checkpoint, data, "test", progress=False)["n"] == result.test["n"]
    # the API's names stay functions after their neighbours' modules are imported
    assert callable(cxr.train) and callable(cxr.evaluate) and callable(cxr.run_study)


@pytest.mark.slow
def test_predictor_takes_paths_pil_images_arrays_and_lists(study):
    data, result = study
    predictor = cxr.Predictor.from_checkpoint(result.checkpoint, device="cpu")
    path = sorted(data.glob("*/*.png"))[0]
    pil = Image.open(path)
    array = np.asarray(pil.convert("L"))
    by_path, by_pil, by_array = predictor.predict(path), predictor.predict(pil), predictor.predict(array)
    assert all(isinstance(p, cxr.Prediction) for p in (by_path, by_pil, by_array))  # one image: one Prediction
    assert by_pil.probabilities == pytest.approx(by_path.probabilities)
    assert by_array.probabilities == pytest.approx(by_path.probabilities)
    wide = Image.fromarray(array.astype(np.uint16) * 257)  # 16-bit (mode I;16): scaled, not clipped
    assert predictor.predict(wide).probabilities == pytest.approx(by_path.probabilities, abs=1e-4)
    several = predictor.predict([path, pil, array])
    assert [p.label for p in several] == [by_path.label] * 3
    with pytest.raises(cxr.CxrError, match="PIL image"):
        predictor.predict([1.5])


def test_no_api_name_is_shadowed_by_a_submodule():
    """Importing `cxr.X` sets the attribute `cxr.X` to the module: no API name may be a module's name."""
    src = Path(cxr.__file__).parent
    modules = {p.stem for p in src.glob("*.py")} | {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    assert not set(cxr._API) & modules
