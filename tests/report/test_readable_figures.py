"""Figures a reader can read: a curve equal to another stays visible and is named, the error gallery's
thumbnails are large enough for their text, and the headline result is on the report's first screen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.report import result_figures as rf
from cxr.report.document import write_report
from cxr.report.explain_figures import explanation_figure


def test_every_class_curve_has_its_own_style_and_an_equal_one_is_named() -> None:
    styles = [rf.curve_style(i) for i in range(4)]
    assert len({(s["linestyle"], s["marker"], s["linewidth"]) for s in styles}) == 4
    assert styles[0]["linewidth"] > styles[3]["linewidth"]  # the later curve is drawn thinner, on top
    x, y = np.array([0.0, 0.3, 1.0]), np.array([0.0, 1.0, 1.0])
    drawn = [("Lung_Opacity", x, y)]
    assert rf._same_as(drawn, x.copy(), y.copy()) == ", same curve as Lung_Opacity"
    assert rf._same_as(drawn, x, np.array([0.0, 0.9, 1.0])) == ""


def test_the_figures_draw_equal_curves(tmp_path: Path) -> None:
    y = np.repeat(np.arange(3), 6)
    p = np.full((18, 3), 0.2)
    p[np.arange(18), y] = 0.6  # every class separated alike: three equal ROC curves
    for draw, name in ((rf.roc_curves, "roc.png"), (rf.pr_curves_figure, "pr.png")):
        out = draw(y, p, ["A", "B", "C"], tmp_path / name, formats=("png",))
        assert Image.open(out).size[0] > 300
    out = rf.reliability_comparison(y, p, p, tmp_path / "rel.png", temperature=1.0, formats=("png",))
    assert out.is_file()


def test_gallery_thumbnails_are_big_enough_to_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out = explanation_figure((rng.random((64, 64)) * 255).astype(np.uint8), rng.random((8, 8)), tmp_path / "t.png",
                             title="Grad-CAM for COVID (p = 0.812); predicted Normal (0.612)", thumbnail=True)
    width, height = Image.open(out).size
    assert width >= 700 and height >= 360  # was 352 x 192 at 80 dpi


def test_the_headline_result_is_on_the_first_screen(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    test = {"n": 48, "accuracy": 0.833, "macro_f1": 0.81, "roc_auc_macro": 0.95,
            "ci": {"accuracy": [0.71, 0.91], "macro_f1": [0.7, 0.9]}}
    (run / "metrics.json").write_text(json.dumps({"test": test, "classes": ["A", "B"]}))
    (run / "config.yaml").write_text("name: run\n")
    md, _ = write_report(run)
    first_screen = md.read_text().split("## Run summary")[0]
    assert "**Test result (n = 48 images):** accuracy 0.833 (0.710 – 0.910), macro-F1 0.810 (0.700 – 0.900)" \
        in first_screen
