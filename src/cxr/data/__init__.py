"""cxr.data."""
