"""cxr: chest X-ray classification, from a folder of images to a trained, reported, servable model."""

__version__ = "0.1.0"
