"""cxr.train."""
