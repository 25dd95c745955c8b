"""Inference engines for the frozen backbone (feature extraction) and for prediction.

Every engine runs a float32 NCHW batch of normalised inputs and returns numpy float32: pooled backbone
features (N, C) or the classifier's logits (N, classes). Probabilities are made by the caller
(`cxr.predict.Predictor.postprocess`), so a logits post-processing step (softmax, a temperature) is
the same whichever engine ran.

- `base`: the `Engine` interface, engine names, which libraries are installed;
- `torch_engine`: PyTorch eager (the reference) or compiled;
- `exports`: ONNX and OpenVINO files built from a model, cached by a digest of its weights;
- `ort`, `openvino`: ONNX Runtime and OpenVINO engines, tuned for batch and for latency;
- `parity`: every export checked against PyTorch on real (or synthetic) images;
- `select`: building an engine by name, and `auto` (the fastest installed, measured once per machine);
- `int8`: OpenVINO post-training int8, accepted only when validation macro-F1 holds.

The package __init__ imports nothing.
"""
