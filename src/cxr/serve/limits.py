"""What one `cxr serve` process accepts: body size, image size, queue, connections and timeouts.

The defaults are safe for a server reachable from other machines: a slow or stalled client is
dropped within `timeout_s`, an image's decode cost is bounded before it is decoded, and work beyond
the queue is answered 503 with Retry-After at once instead of growing latency without bound.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import CxrError
from cxr.pixels import MAX_PIXELS, DecodeLimits

log = logging.getLogger(__name__)

MB = 1024 * 1024
DECODED_BYTES_PER_PIXEL = 2  # an image of max_pixels may decode to 16-bit gray, no wider
MAX_TIMEOUT_S = 3600.0


def _default_decoders() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeLimits:
    """Limits of one server; every field is a `cxr serve` option of the same name (--max-body-mb ...)."""

    max_body_mb: float = 20.0  # largest request body in MB (a batch counts whole); 413 over it
    max_pixels: int = MAX_PIXELS  # largest image, width x height (at most cxr.io's bomb limit); 422 over it
    max_files: int = 16  # most images in one POST /v1/predict/batch; 413 over it
    max_queue: int = 64  # images accepted and not yet answered (decoding or waiting); 503 + Retry-After over it
    limit_concurrency: int = 128  # open connections and requests before uvicorn answers 503
    timeout_s: float = 10.0  # request headers, and then the whole body, must arrive within this; else dropped
    idle_timeout_s: float = 5.0  # most seconds without a byte of the body; else dropped
    decode_workers: int = 0  # images decoded at once (0: min(4, CPUs))

    def __post_init__(self) -> None:
        _positive("max_body_mb", self.max_body_mb)
        _integer("max_pixels", self.max_pixels, 1, MAX_PIXELS)
        for name in ("max_files", "max_queue", "limit_concurrency"):
            _integer(name, getattr(self, name), 1, 1_000_000)
        _integer("decode_workers", self.decode_workers, 0, 64)
        for name in ("timeout_s", "idle_timeout_s"):
            _positive(name, getattr(self, name), MAX_TIMEOUT_S)

    @property
    def max_bytes(self) -> int:
        """The largest request body in bytes."""
        return int(self.max_body_mb * MB)

    @property
    def decode(self) -> DecodeLimits:
        """What one image's decode may cost: `max_pixels`, decoded to at most 2 bytes per pixel."""
        return DecodeLimits(max_pixels=self.max_pixels, max_bytes=self.max_pixels * DECODED_BYTES_PER_PIXEL)

    @property
    def decoders(self) -> int:
        """Images decoded at once."""
        return self.decode_workers or _default_decoders()


def option_name(field: str) -> str:
    """The `cxr serve` option of a `ServeLimits` field: max_body_mb -> --max-body-mb, timeout_s -> --timeout."""
    name = field.removesuffix("_s") if field.endswith("timeout_s") else field
    return "--" + name.replace("_", "-")


def _positive(name: str, value: float, upper: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= upper or math.isnan(value):
        bound = f" and <= {upper:g}" if math.isfinite(upper) else ""
        raise CxrError(f"{name} ({option_name(name)}) must be a number > 0{bound}, got {value!r}")


def _integer(name: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CxrError(f"{name} ({option_name(name)}) must be an integer in {lo}..{hi}, got {value!r}")



MIN_API_KEY_CHARS = 16


def read_api_key(path: Path) -> str:
    """The API key in `path` (its first line, stripped); refused when missing, empty or short.

    The key is never taken from the command line, where other users see it in the process list.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CxrError(f"--api-key-file {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CxrError(f"--api-key-file {path}: cannot read it ({exc})") from None
    lines = text.splitlines()
    key = lines[0].strip() if lines else ""
    if len(key) < MIN_API_KEY_CHARS:
        raise CxrError(f"--api-key-file {path}: the key on its first line has {len(key)} characters; "
                       f"at least {MIN_API_KEY_CHARS} are needed (e.g. python -c 'import secrets; "
                       f"print(secrets.token_urlsafe(32))')")
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise CxrError(f"--api-key-file {path}: the key must not contain spaces or control characters")
    if os.name == "posix" and Path(path).stat().st_mode & 0o077:
        log.warning("--api-key-file %s is readable by other users (chmod 600 it)", path)
    return key
