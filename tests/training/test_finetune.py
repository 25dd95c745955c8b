"""Two-phase training (head on the feature cache, then fine-tuning on images), its resume, the
fine-tune recipe file, and test-time augmentation as an evaluation option."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from cxr import study
from cxr.checkpoint import load_checkpoint
from cxr.config import RunConfig, load_config
from cxr.errors import CxrError
from cxr.models.build import frozen_stages
from cxr.rundir import HISTORY_COLUMNS, PHASE_COLUMN
from cxr.study import inputs, phases

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from cxr.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", n_per_class=8, size=40, seed=0)


def tiny_config() -> RunConfig:
    cfg = RunConfig(name="finetune")
    cfg.data.image_size = 32
    cfg.data.num_workers = 0
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "lite0-imagenet"  # real features, so the model learns and the comparisons mean something
    cfg.model.head = (16,)
    cfg.train.epochs = 2
    cfg.train.batch_size = 8
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 1e-3
    cfg.train.weight_decay = 0.01
    cfg.train.schedule = "cosine"
    cfg.train.warmup_epochs = 0.5
    cfg.train.label_smoothing = 0.1
    cfg.train.feature_views = 2
    cfg.train.finetune_epochs = 2
    cfg.train.finetune_freeze = "stages:2"
    cfg.train.finetune_lr = 5e-4
    cfg.train.backbone_lr_ratio = 0.2
    cfg.eval.bootstrap = 10
    cfg.eval.aug_samples = 2
    cfg.eval.grid_per_class = 1
    return cfg


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def two_phase_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "two_phase"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:  # the same single thread as the tests that compare with it
        mp.setenv("OMP_NUM_THREADS", "1")
        try:
            return study.run_study(tiny_config(), tiny_data, out, cache_dir=out.parent / "cache", progress=False)
        finally:
            torch.set_num_threads(threads)


def test_finetune_config_takes_the_finetune_keys():
    cfg = tiny_config()
    ft = study.finetune_config(cfg)
    assert (ft.model.freeze, ft.train.epochs, ft.train.lr) == ("stages:2", 2, 5e-4)
    assert (cfg.model.freeze, cfg.train.epochs, cfg.train.lr) == ("base", 2, 1e-3)  # the run config is unchanged
    assert ft.train.backbone_lr_ratio == cfg.train.backbone_lr_ratio and ft.data == cfg.data


@pytest.mark.slow
def test_two_phases_continue_one_history_and_fine_tune_only_the_unfrozen_stages(two_phase_run):
    rows = _history(two_phase_run)
    assert tuple(rows[0]) == (*HISTORY_COLUMNS, PHASE_COLUMN)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r[PHASE_COLUMN]) for r in rows] == [1, 1, 2, 2]

    metrics = json.loads((two_phase_run / "metrics.json").read_text())
    assert [p["phase"] for p in metrics["phases"]] == [1, 2]
    assert metrics["phases"][0]["feature_cache"] and not metrics["phases"][1]["feature_cache"]
    assert metrics["phases"][1]["trainable"] > metrics["phases"][0]["trainable"]
    best_loss = min(float(r["val_loss"]) for r in rows)
    assert metrics["best_val_loss"] == pytest.approx(best_loss)

    last = load_checkpoint(two_phase_run / "checkpoints" / "last.pt")
    assert last["epoch"] == 4 and last["extra"]["phase"] == 2 and last["extra"]["phase_start_epoch"] == 2
    groups = last["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["head", "backbone"]  # discriminative learning rates
    assert [g["initial_lr"] for g in groups] == pytest.approx([5e-4, 5e-4 * 0.2])

    # the head phase's best weights are where fine-tuning started: frozen stages are still those weights
    from cxr.runtime import seed_everything

    seed_everything(tiny_config().train.seed)
    model = inputs.build_classifier(tiny_config(), 4)  # the run's initial weights
    model.freeze = "stages:2"
    frozen = {f"backbone.{name}" for stage in frozen_stages(model)
              for name, _ in _named(model.backbone, stage)}
    start = load_checkpoint(two_phase_run / "checkpoints" / "best.pt")
    assert frozen and all(torch.equal(last["model"][k], model.state_dict()[k]) for k in frozen)
    trained = [k for k in last["model"] if k.startswith("backbone.") and k not in frozen and "num_batches" not in k]
    assert any(not torch.equal(last["model"][k], model.state_dict()[k]) for k in trained)
    assert start["epoch"] == int(rows[[float(r["val_loss"]) for r in rows].index(best_loss)]["epoch"])


def _named(root: torch.nn.Module, stage: torch.nn.Module):
    """(name relative to `root`, tensor) for every parameter and buffer inside `stage`."""
    ids = {id(t) for t in (*stage.parameters(), *stage.buffers())}
    return [(n, t) for n, t in (*root.named_parameters(), *root.named_buffers()) if id(t) in ids]


@pytest.mark.slow
@pytest.mark.parametrize("kill_epoch", [2, 3], ids=["between-phases", "inside-fine-tuning"])
def test_resume_in_either_phase_equals_an_uninterrupted_run(two_phase_run, tiny_data, tmp_path, monkeypatch,
                                                             kill_epoch):
    class Killed(Exception):
        pass

    fit = phases.fit

    def killing_fit(*args, **kwargs):
        def stop(row):
            if row["epoch"] == kill_epoch:
                raise Killed

        return fit(*args, on_epoch_end=stop, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(phases, "fit", killing_fit)
    with pytest.raises(Killed):
        study.train(tiny_config(), tiny_data, out, cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(phases, "fit", fit)
    torch.rand(3)  # the global RNG moves on, as in a new process
    study.train(tiny_config(), tiny_data, out, resume=True, cache_dir=tmp_path / "cache", progress=False)

    assert _without_seconds(_history(out)) == _without_seconds(_history(two_phase_run))
    a = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(two_phase_run / "checkpoints" / "last.pt")["model"]
    for key, value in b.items():
        torch.testing.assert_close(a[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_resuming_a_fine_tuning_phase_without_finetune_epochs_is_a_user_error(two_phase_run, tiny_data, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(two_phase_run, out)
    cfg = tiny_config()
    cfg.train.finetune_epochs = 0
    with pytest.raises(CxrError, match="fine-tuning phase, but train.finetune_epochs is 0"):
        study.train(cfg, tiny_data, out, resume=True, progress=False)


@pytest.mark.slow
def test_tta_is_an_evaluation_option(two_phase_run, tiny_data, tmp_path):
    best = two_phase_run / "checkpoints" / "best.pt"
    plain = study.evaluate_checkpoint(best, tiny_data, "test", progress=False)
    tta = study.evaluate_checkpoint(best, tiny_data, "test", tta=True, out_dir=tmp_path / "tta", progress=False)
    assert tta["n"] == plain["n"] == json.loads((two_phase_run / "metrics.json").read_text())["test"]["n"]
    assert tta["loss"] != pytest.approx(plain["loss"], abs=1e-9)  # the flip and shifts change the probabilities
    assert json.loads((tmp_path / "tta" / "metrics.json").read_text())["tta"] is True
    with open(tmp_path / "tta" / "predictions.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            assert sum(float(v) for k, v in row.items() if k.startswith("prob_")) == pytest.approx(1.0, abs=1e-4)


def test_tta_from_the_command_line_reaches_the_config(tmp_path):
    from cxr.cli import build_parser
    from cxr.cli.run import resolve_config

    args = build_parser().parse_args(["run", "--data", str(tmp_path), "--set", "eval.tta=true"])
    cfg, _ = resolve_config(args)
    assert cfg.eval.tta is True
    args = build_parser().parse_args(["evaluate", "--checkpoint", "x.pt", "--data", str(tmp_path), "--tta"])
    assert args.tta is True


# --------------------------------------------------------------------------------------------------
# configs/finetune.yaml


def test_finetune_yaml_is_a_valid_two_phase_recipe():
    cfg = load_config(REPO / "configs" / "finetune.yaml")
    seed = load_config(REPO / "configs" / "seed.yaml")
    assert cfg.model.freeze == "base" and cfg.train.feature_cache  # phase 1: the head on the feature cache
    assert cfg.train.finetune_epochs > 0 and cfg.train.finetune_freeze != "base"
    assert cfg.train.optimizer == "adamw" and cfg.train.schedule == "cosine" and cfg.train.warmup_epochs > 0
    assert 0 < cfg.train.label_smoothing < 1 and 0 < cfg.train.backbone_lr_ratio <= 1
    model = inputs.build_classifier(cfg, 4, load_weights=False)
    from cxr.models.build import apply_freeze

    apply_freeze(model, cfg.train.finetune_freeze)  # a freeze mode this backbone accepts
    # the same split as the seed recipe, so the accuracy benchmark compares like with like
    for key in ("ratios", "split_seed", "near_duplicate_threshold"):
        assert getattr(cfg.data, key) == getattr(seed.data, key), key
    assert cfg.train.seed == seed.train.seed
    # every key is spelled out, as in seed.yaml
    raw = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())
    assert {s: set(v) for s, v in raw.items() if isinstance(v, dict)} == {
        s: set(v) for s, v in yaml.safe_load((REPO / "configs" / "seed.yaml").read_text()).items()
        if isinstance(v, dict)
    }
