"""cxr.training: the training loop, its state and checkpoints, the feature cache, distributed training."""
