"""SHA-256 of files, streamed in chunks: checkpoint identities, weights checks, cache keys, data digests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK = 1 << 20  # bytes read per step


def update_with_file(digest: Any, path: str | Path) -> Any:
    """Feed the bytes of `path` into a hashlib object and return it."""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    return update_with_file(hashlib.sha256(), path).hexdigest()
