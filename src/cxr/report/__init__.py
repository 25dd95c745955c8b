"""cxr.report."""
