"""Lung segmentation: a built-in model that draws both lungs on any chest X-ray, with quality control.

- `qc`: `LungQC` and `lung_qc(prob)`: area fraction, connected parts, left/right balance and mean
  confidence of a predicted mask, and the `ok` / `suspect` flag made from them (numpy/scipy only);
- `model`: the network (segmentation-models-pytorch) and its settings (`LungModelSpec`);
- `store`: the weights file (safetensors with the spec in its metadata) and the packaged default;
- `segmenter`: `LungSegmenter` (images of any size -> `LungResult` masks at their own size), run on
  the engine layer (ONNX Runtime / OpenVINO) with PyTorch as the reference;
- `pairs`, `train`, `evaluate`, `report`: image/mask pairs, training, Dice/IoU/HD95 with intervals,
  the training report with its overlay grid (what `cxr lungs` runs).

This package's __init__ imports nothing: `from cxr.lungs.segmenter import LungSegmenter`.
"""
