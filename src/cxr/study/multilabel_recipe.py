"""The multi-label recipe: the settings a multi-label study takes in place of the seed's single-label defaults.

The seed's head (GAP -> 2048 -> 512 -> 128 -> findings, Adam at 1e-4, unweighted loss, best.pt by val
loss) collapses on a few hundred multi-label X-rays: on nih-dev (573 NIH images, 14 findings) it
called no finding at all from epoch 2 on and its test mean AUROC was 0.53, while a class-balanced
logistic regression on the same frozen features reached 0.59-0.61. A finding present in 2-18% of
the images teaches an unweighted head to say "absent" everywhere, and the 5M-parameter MLP has
nothing to learn the rest from. So a multi-label study trains its head like a regularised,
class-balanced logistic-regression probe (`bench/multilabel_probe.py` compares the two):

- `model.head: ()`: one linear layer on the pooled features (a probe), `model.head_init: zeros`:
  starting at zero as a logistic regression does (a Glorot start is a random projection that a few
  epochs on a few hundred images never remove: nih-dev test mean AUROC 0.59-0.65 by init seed alone);
- `train.class_weights: balanced`: each finding's positives weighted negatives/positives
  (`cxr.training.losses.positive_weights`), as sklearn's class_weight='balanced' does up to scale;
- `train.lr: 1e-3` and `train.weight_decay` (L2): the probe's optimiser settings;
- best.pt and early stopping by validation mean AUROC (`cxr.training.state.selection_score`, for
  every multi-label run, recipe or not).

Only settings still at the seed's default change (a value you set, on the command line or in a
config file, is kept; one equal to the seed's default counts as not set), each change is logged, and
config.yaml records the result, so checkpoints rebuild the same head. `train.multilabel_recipe:
false` keeps the seed's settings.
"""

from __future__ import annotations

import logging
from typing import Any

from cxr.config import RunConfig, apply_overrides, get_value

log = logging.getLogger(__name__)

MULTILABEL_RECIPE: dict[str, Any] = {
    "model.head": (),
    "model.head_init": "zeros",
    "train.class_weights": "balanced",
    "train.lr": 1e-3,
    "train.weight_decay": 1e-2,
}


def with_task_defaults(cfg: RunConfig, task: str) -> RunConfig:
    """`cfg` with the multi-label recipe applied to the settings still at the seed's defaults when `task`
    is multilabel and `train.multilabel_recipe` is on; `cfg` itself otherwise. Idempotent."""
    if task != "multilabel" or not cfg.train.multilabel_recipe:
        return cfg
    seed = RunConfig()
    changes = {key: value for key, value in MULTILABEL_RECIPE.items()
               if get_value(cfg, key) == get_value(seed, key) and get_value(cfg, key) != value}
    if not changes:
        return cfg
    log.info("multi-label study: the multi-label recipe replaces the seed's %s (train.multilabel_recipe: false "
             "keeps them)", ", ".join(f"{key} {get_value(cfg, key)!r} -> {value!r}" for key, value in changes.items()))
    return apply_overrides(cfg, changes)
