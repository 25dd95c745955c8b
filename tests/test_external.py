"""External validation end to end: a study with external sets (label maps, only some classes), the
report's domain-shift table, and `cxr evaluate RUN_DIR --external` adding to a finished run without
touching its other files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cxr import study
from cxr.cli import main
from cxr.config import RunConfig
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _config(external: dict) -> RunConfig:
    cfg = RunConfig(name="ext")
    cfg.model.backbone, cfg.model.weights, cfg.model.head = "efficientnet_lite0", "random", (16,)
    cfg.data.image_size, cfg.data.num_workers = 64, 0
    cfg.train.epochs, cfg.train.batch_size, cfg.train.precision = 1, 8, "fp32"
    cfg.eval.bootstrap, cfg.eval.aug_samples, cfg.eval.grid_per_class, cfg.eval.shortcut_gallery = 30, 0, 1, 2
    cfg.eval.external = external
    return cfg


def _external(root: Path, names: dict[str, str], n: int = 4, seed: int = 7) -> Path:
    """A set in another hospital's spelling: each of our classes saved under its name there."""
    data = generate_dataset(root, n_per_class=n, size=48, seed=seed, classes=list(names))
    for ours, theirs in names.items():
        (data / ours).rename(data / theirs)
    return data


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("external")
    data = generate_dataset(base / "data", n_per_class=6, size=48, seed=0, masks=True)
    hosp = _external(base / "hospB", {"COVID": "COVID-19", "Normal": "No_Finding", "Lung_Opacity": "Tuberculosis"})
    (base / "map.yaml").write_text("Tuberculosis: ignore\n")
    odd = _external(base / "odd", {"COVID": "COVID", "Normal": "Healthyish"}, n=2)
    cfg = _config({"hospB": {"data": str(hosp), "label_map": str(base / "map.yaml")}, "broken": str(odd)})
    run = study.run_study(cfg, data, base / "run", progress=False).run_dir
    return {"base": base, "run": run, "data": data}


def test_the_study_scores_each_external_set_on_the_classes_it_holds(finished):
    metrics = json.loads((finished["run"] / "metrics.json").read_text())
    section = metrics["external"]
    entry = section["sets"]["hospB"]
    assert entry["classes_present"] == ["COVID", "Normal"] and entry["n"] == 8 and entry["ignored"] == 1
    assert entry["label_map"] == {"COVID-19": {"class": "COVID", "how": "class"},
                                  "No_Finding": {"class": "Normal", "how": "alias"},
                                  "Tuberculosis": {"class": None, "how": "label map"}}
    assert set(entry["metrics"]["per_class"]) == {"COVID", "Normal"}
    assert set(entry["metrics"]["predicted_absent"]) == {"Lung_Opacity", "Viral_Pneumonia"}
    assert entry["internal_same_classes"]["classes_present"] == ["COVID", "Normal"]
    assert section["internal_test"]["classes_present"] == ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]
    lungs = entry["shortcut"]["lungs"]  # the external set has no masks: the audit uses automatic ones
    assert lungs["auto"] == 8 and lungs["given"] == 0 and entry["shortcut"]["images"] == 8
    assert "lungs" not in metrics["shortcut"] or not metrics["shortcut"]["lungs"].get("auto")
    assert metrics["shortcut"]["images"] == metrics["test"]["n"]  # the internal test split has masks
    report = (finished["run"] / "report.md").read_text()
    assert "## External validation (domain shift)" in report and "| External: hospB | 8 | COVID, Normal |" in report
    assert "| Internal test, hospB's classes |" in report and "## Shortcut audit" in report
    assert "| Tuberculosis | ignored | label map |" in report
    assert "'Healthyish'" in section["sets"]["broken"]["error"]  # a set that fails does not lose the study
    assert "External set broken" in report and "could not be scored" in report
    sets = entry["conformal"]  # the prediction sets of best.pt judged on the external set too
    assert sets["n"] == 8 and set(sets["per_class"]) == {"COVID", "Normal"} and sum(sets["size_counts"].values()) == 8
    assert "| hospB (external) | 8 |" in report.split("## Prediction sets (conformal)")[1]


def test_a_missing_external_set_is_refused_before_training(tmp_path):
    with pytest.raises(CxrError, match="external set gone: data not found"):
        study.run_study(_config({"gone": str(tmp_path / "nowhere")}), tmp_path, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _digests(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_evaluate_run_dir_adds_an_external_set_and_touches_nothing_else(finished, tmp_path, capsys):
    run = finished["run"]
    before, metrics_before = _digests(run), json.loads((run / "metrics.json").read_text())
    one = _external(tmp_path / "one", {"Normal": "NORMAL"}, n=5, seed=3)
    assert main(["evaluate", str(run), "--external", f"onlyNormal={one}", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "external onlyNormal n=5 (Normal): accuracy" in out and out.strip().endswith("report.html")
    after, metrics_after = _digests(run), json.loads((run / "metrics.json").read_text())
    changed = {name for name in before if before[name] != after.get(name)}
    assert changed <= {"metrics.json", "report.md", "report.html", "lungs.json", "figures/lungs_auto.png"}
    added = set(after) - set(before)  # the new set's audit (automatic lungs): its gallery
    assert set(before) <= set(after) and all(a.startswith("figures/shortcut_external-onlyNormal_") for a in added)
    assert {k: v for k, v in metrics_after.items() if k != "external"} == {
        k: v for k, v in metrics_before.items() if k != "external"}
    sets = metrics_after["external"]["sets"]
    assert list(sets) == ["hospB", "broken", "onlyNormal"]
    assert sets["hospB"] == metrics_before["external"]["sets"]["hospB"]
    single = sets["onlyNormal"]["metrics"]
    assert single["roc_auc_macro"] is None and single["abnormal_auroc"] is None  # one class: cannot be computed
    report = (run / "report.md").read_text()
    assert "| External: onlyNormal | 5 | Normal |" in report and "n/a" in report.split("External: onlyNormal")[1][:200]


def test_evaluate_adds_the_masked_region_test_and_refuses_nothing_to_do(finished, capsys):
    run = finished["run"]
    assert main(["evaluate", str(run), "--occlude", "lungs", "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "lungs" in metrics["shortcut"]["occlusion"] and "outside" not in metrics["shortcut"]["occlusion"]
    assert "shortcut audit (test" in capsys.readouterr().out
    assert main(["evaluate", str(run)]) == 2
    assert "nothing to add" in capsys.readouterr().err


def test_an_unmapped_external_class_is_a_clear_error(finished, tmp_path, capsys):
    odd = _external(tmp_path / "odd", {"COVID": "COVID-19", "Normal": "Healthyish"})
    assert main(["evaluate", str(finished["run"]), "--external", f"odd={odd}", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "'Healthyish'" in err and "COVID, Lung_Opacity, Normal, Viral_Pneumonia" in err and "--label-map" in err
    (tmp_path / "map.yaml").write_text("Healthyish: Normal\n")
    code = main(["evaluate", "--checkpoint", str(finished["run"] / "checkpoints" / "best.pt"), "--external",
                 f"odd={odd}", "--label-map", str(tmp_path / "map.yaml"), "--device", "cpu"])
    assert code == 0 and "external odd n=8 (COVID, Normal)" in capsys.readouterr().out


def test_an_external_set_with_lung_boxes_gets_the_shortcut_audit(finished, tmp_path, capsys):
    boxed = _external(tmp_path / "boxed", {"COVID": "COVID", "Normal": "Normal"}, n=3, seed=11)
    rows = [f"{p.relative_to(boxed).as_posix()},4,6,{20 + i % 3},40" for i, p in enumerate(sorted(boxed.rglob("*.png")))]
    (tmp_path / "boxes.csv").write_text("path,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    code = main(["evaluate", "--checkpoint", str(finished["run"] / "checkpoints" / "best.pt"), "--external",
                 f"boxed={boxed},boxes={tmp_path / 'boxes.csv'}", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    entry = json.loads((tmp_path / "out" / "metrics.json").read_text())["external"]["sets"]["boxed"]
    assert entry["masks"] == {"with_region": 6, "without_region": 0}
    audit = entry["shortcut"]
    assert audit["images"] == 6 and set(audit["occlusion"]) >= {"none", "lungs", "outside"}
    assert 0.1 < audit["attention"]["mean_area"] < 0.5  # the boxes' share of the 48x48 images
    assert len(list((tmp_path / "out" / "figures").glob("shortcut_external-boxed_*.png"))) == 2
    captured = capsys.readouterr()
    assert "shortcut audit (external boxed" in captured.out
    assert "missing from the run directory" not in captured.err  # an --out folder is not a run
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Evaluated checkpoint" in report and "## Run summary" not in report and "not available" not in report
    assert "internal test rows are the test split of the checkpoint's run" in report


def test_a_foreign_abnormal_class_counts_against_normal(finished, tmp_path, capsys):
    tb = _external(tmp_path / "tb", {"COVID": "TB", "Normal": "normal"}, n=4, seed=5)
    (tmp_path / "tb.yaml").write_text("TB: abnormal\n")
    code = main(["evaluate", "--checkpoint", str(finished["run"] / "checkpoints" / "best.pt"), "--external",
                 f"tb={tb},label_map={tmp_path / 'tb.yaml'}", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    assert "external tb n=8 (Normal, TB (abnormal))" in capsys.readouterr().out
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["external"]["sets"]["tb"]["metrics"]
    assert m["n"] == 8 and m["n_model_classes"] == 4 and m["foreign_present"] == ["TB"]
    assert m["abnormal_auroc"] is not None and m["called_normal"] == m["per_class"]["Normal"]["recall"]
    assert m["foreign"]["TB"]["n"] == 4 and sum(m["foreign"]["TB"]["predicted"].values()) == 4
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| External: tb | 8 | Normal, TB (abnormal) |" in report and "Called abnormal (95% CI)" in report
