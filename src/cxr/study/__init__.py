"""A study, end to end: data folder -> split -> figures -> training -> test evaluation -> report.

`run_study` is what `cxr run` and `cxr demo` call; `train` stops after training; `evaluate_checkpoint`
scores a saved model on a data folder. One responsibility per module:

- `data`: discovery, audit and split of the images, the data figures (`PreparedData`);
- `inputs`: the classifier from the config, image and cached-feature loaders;
- `phases`: the phase plan (head, then optional fine-tuning) and running one phase;
- `evaluation`: best.pt on the test split, any checkpoint on any data;
- `summary`: metrics.json, predictions.csv and the result figures;
- `scoring`, `shortcut`, `external`, `audits`: scoring with lung regions, the shortcut audit, external
  validation, and both in a study or added to a finished run (`cxr evaluate RUN_DIR`);
- `run`: the entry points and the run-folder checks; `demo`: the synthetic demo;
- `presets`, `logfile`: named settings and the run's log.txt.
"""

from cxr.study.checkpoint_eval import evaluate_checkpoint
from cxr.study.demo import run_demo
from cxr.study.presets import demo_config, finetune_config
from cxr.study.run import StudyResult, run_study, train

__all__ = ["StudyResult", "demo_config", "evaluate_checkpoint", "finetune_config", "run_demo", "run_study", "train"]
