"""The config keys of external validation, lung masks and the shortcut audit: validated at load."""

from __future__ import annotations

import pytest

from cxr.cli import main
from cxr.config import load_config, to_dict
from cxr.errors import CxrError


def test_external_sets_load_as_paths_or_mappings_and_round_trip(tmp_path):
    (tmp_path / "c.yaml").write_text("eval:\n  external:\n    hospB: /data/b\n    hospC: {data: /data/c, boxes: /c.csv}\n")
    cfg = load_config(tmp_path / "c.yaml", {"eval.external.hospD": "/data/d", "data.lung_crop": True})
    assert cfg.eval.external == {"hospB": "/data/b", "hospC": {"data": "/data/c", "boxes": "/c.csv"},
                                 "hospD": "/data/d"}
    assert cfg.data.lung_crop is True and cfg.eval.shortcut_audit is True
    assert to_dict(cfg)["eval"]["external"]["hospC"]["boxes"] == "/c.csv"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"eval.external": "/data/b"}, "must be a mapping"),
    ({"eval.external.bad name": "/x"}, "letters, digits"),
    ({"eval.external.b": {"dat": "/x"}}, "did you mean 'data'"),
    ({"eval.external.b": {"boxes": "/x"}}, "needs a data path"),
    ({"eval.external.b": ""}, "needs a data path"),
    ({"data.masks": 3}, "data.masks must be a path"),
    ({"eval.occlude_fill": "mean"}, "allowed: median, zero"),
    ({"eval.shortcut_max_images": 0}, "shortcut_max_images must be >= 1"),
    ({"data.lung_crop_margin": 1.5}, "lung_crop_margin"),
])
def test_bad_values_are_refused_at_load_with_the_key(overrides, message):
    with pytest.raises(CxrError, match=message):
        load_config(None, overrides)


def test_a_bad_external_flag_is_a_usage_error(capsys):
    for argv, message in ((["run", "--data", "x", "--external", "nopath"], "NAME=PATH"),
                          (["evaluate", "--checkpoint", "x.pt", "--external", "a=/p,boxes"], "key=value")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err
