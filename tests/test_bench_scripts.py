"""The benchmark scripts run end to end on tiny inputs and print the JSON their READMEs describe.

Their figures come from real data (bench/README.md); here only that each script works and that its
numbers are consistent with each other (e.g. TTA scores the same test rows as the run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr.data.synthetic import generate_dataset

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, timeout: float = 420, malloc_flag: bool = True) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, str(BENCH / name), *args, *(["--no-malloc-tune"] if malloc_flag else [])],
                         env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("bench") / "data", n_per_class=10, size=64, seed=0)


def test_throughput_rows_on_a_tiny_backbone():
    result = run_script("throughput.py", "--backbone", "efficientnet_lite0", "--batch", "2", "--size", "64",
                        "--iters", "1", "--warmup", "0", "--latency-runs", "2", "--head-steps", "3",
                        "--skip", "bf16,compile,openvino,malloc")
    assert set(result["rows"]) == {"fp32_eager", "fp32_channels_last"}
    assert all(row["images_per_s"] > 0 for row in result["rows"].values())
    assert result["best_pytorch"] in result["rows"]
    assert result["latency_batch1"]["runs"] == 2 and result["latency_batch1"]["median_ms"] > 0
    assert result["head_training"]["steps"] == 3 and result["head_training"]["samples_per_s"] > 0
    assert "ratio_to_openvino" not in result  # OpenVINO was skipped: no ratio is invented


def test_accuracy_compares_two_recipes_on_one_split_and_tta_scores_the_test_rows(data, tmp_path):
    result = run_script("accuracy.py", str(data), "--weights", "random", "--epochs-head", "1",
                        "--epochs-finetune", "1", "--tta", "--set", "data.image_size=64", "--out", str(tmp_path))
    frozen, finetune = result["recipes"]["frozen"], result["recipes"]["finetune"]
    assert frozen["recipe"]["freeze"] == "base" and finetune["recipe"]["finetune_epochs"] == 1
    assert frozen["split_counts"] == finetune["split_counts"] and result["comparison"]["same_split"]
    for row in (frozen, finetune):
        assert row["test_tta"]["n"] == row["test"]["n"] == row["split_counts"]["test"]
        lo, hi = row["test"]["macro_f1_ci"]
        assert lo <= row["test"]["macro_f1"] <= hi
    gain = finetune["test"]["macro_f1"] - frozen["test"]["macro_f1"]
    assert result["comparison"]["macro_f1_gain"] == pytest.approx(gain, abs=1e-3)


def test_seed_recipe_times_the_cached_and_the_direct_path(data, tmp_path):
    result = run_script("seed_recipe.py", str(data), "--backbone", "efficientnet_lite0", "--views", "1",
                        "--direct-epochs", "1", "--epochs", "2", "--image-size", "64", "--numerics", "4",
                        "--out", str(tmp_path))
    cached, direct = result["cached"]["1"], result["direct"]
    assert cached["feature_cache"] and not direct["feature_cache"]
    assert cached["epochs_run"] == 2 and direct["epochs_run"] == 1
    assert direct["estimated_seconds"] > direct["wall_seconds"]  # one epoch run, scaled to two
    assert result["speed_ratios"]["k1"]["direct_over_cached"] > 0
    assert result["numerics_bf16_vs_fp32"]["images"] == 4
    assert 0.5 < result["numerics_bf16_vs_fp32"]["cosine_mean"] <= 1.0 + 1e-6


def test_input_pipeline_times_both_paths_and_training_fed_by_each(data, tmp_path):
    result = run_script("input_pipeline.py", str(data), "--size", "64", "--batch", "4", "--images", "16",
                        "--steps", "2", "--workers", "0", "--train", "--cache", str(tmp_path), malloc_flag=False)
    assert result["images"] == 16 and result["device"] == "cpu"
    for table in (result["input_images_per_s"], result["train_images_per_s"]):
        assert set(table) == {"per_image_workers", "decoded_cache_device_augment"}
        assert all(value > 0 for value in table.values())


def test_engine_rows_ratios_and_the_machine_limit():
    result = run_script("engine.py", "--size", "32", "--batch", "2", "--iters", "1", "--warmup", "0",
                        "--matmul", "128", "--skip", "int8,torch_bf16")
    rows = result["rows"]
    assert {"torch_eager_fp32", "torch_channels_last_fp32", "auto"} <= set(rows)
    assert rows["torch_eager_fp32"]["ratio_to_eager_fp32"] == 1.0
    limit = result["machine_fp32_limit"]["limit_gflops"]
    assert limit > 0 and 0 < result["gflop_per_image"] < 0.1  # Lite0 at 32 px: ~0.02 GFLOP
    for row in rows.values():
        assert row["images_per_s"] > 0
        assert row["fraction_of_fp32_limit"] == pytest.approx(row["gflops"] / limit, abs=2e-3)
    assert result["best"] in rows and result["best_fp32"] in rows
    assert len(result["environment"]["loadavg_start"]) == 3


def test_busy_reports_idle_and_busy_throughput_as_a_ratio():
    result = run_script("busy.py", "--size", "32", "--batch", "2", "--seconds", "0.2", "--configs", "cxr_torch")
    row = result["configs"]["cxr_torch"]
    assert row["idle"]["images_per_s"] > 0 and row["busy"]["images_per_s"] > 0
    assert row["ratio_busy_to_idle"] == pytest.approx(row["busy"]["images_per_s"] / row["idle"]["images_per_s"],
                                                      abs=1e-3)
    assert row["idle"]["omp_wait_policy"] is None  # --no-malloc-tune: the parent set no wait policy
    assert len(result["loadavg_start"]) == 3


def test_predict_times_the_command_and_the_engines_agree(data, tmp_path):
    result = run_script("predict.py", str(data), "--n", "8", "--train-images", "30", "--epochs", "1",
                        "--image-size", "64",
                        "--weights", "random", "--batch", "4", "--engine", "onnxruntime", "--out", str(tmp_path))
    assert set(result["predict"]) == {"torch_fp32", "torch", "onnxruntime_cold", "onnxruntime_warm"}
    assert result["predict"]["torch_fp32"]["label_agreement_with_torch_fp32"] == 1.0
    for run in result["predict"].values():
        assert run["images_per_s_with_startup"] > 0 and run["label_agreement_with_torch_fp32"] >= 0.75
    assert result["evaluate"]["onnxruntime"]["engine"].startswith("onnxruntime")
    assert result["evaluate"]["pred_agreement"] >= 0.75


def test_lungs_bench_trains_scores_times_and_checks_qc(tmp_path):
    from PIL import Image

    from cxr.data.synthetic import make_image_and_mask

    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / "lungseg" / folder).mkdir(parents=True)
    for i in range(12):
        name = f"{'MCUCXR' if i < 4 else 'CHNCXR'}_{i:04d}_0.png"
        image, mask = make_image_and_mask("Normal", rng, 64)
        Image.fromarray(image).save(tmp_path / "lungseg" / "images" / name)
        Image.fromarray(mask).save(tmp_path / "lungseg" / "masks" / name)
    result = run_script("lungs.py", str(tmp_path / "lungseg"), "--models", str(tmp_path / "models"), "--epochs", "1",
                        "--site-epochs", "1", "--size", "64", "--engine", "torch", "--threads", "1",
                        "--speed-images", "8", "--batch", "4")
    assert result["cross_site"]["shenzhen_to_montgomery"]["n"] == 4
    assert result["cross_site"]["montgomery_to_shenzhen"]["n"] == 8
    assert result["random_holdout"]["n"] == 2 and 0 <= result["random_holdout"]["dice"]["mean"] <= 1
    assert result["speed"]["images"] == 8 and result["speed"]["images_per_s"] > 0 and result["speed"]["startup_s"] >= 0
    assert result["qc"]["heldout_xray"]["n"] == 2 and result["qc"]["non_xray"]["n"] >= 20
    assert (tmp_path / "models" / "shenzhen" / "model.safetensors").is_file()
