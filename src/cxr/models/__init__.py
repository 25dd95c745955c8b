"""cxr.models: ResNet-50 / EfficientNet-Lite0 backbones, weights records, the seed's head, freezing.

Import the modules themselves (`cxr.models.build`, `cxr.models.weights`, ...). This package file
imports nothing, so the torch-free `cxr.models.catalog` can be read without loading PyTorch.
"""
