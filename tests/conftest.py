"""Shared fixtures. Tests are cheap: tiny images made in the test or by the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr4-dev"


@pytest.fixture
def shared_data() -> Path:
    """The real cxr4-dev folder beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/cxr4-dev is not present")
    return SHARED_DATA
