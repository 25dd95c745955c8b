"""Automatic lungs (`data.lungs: auto`): where lungs are needed and the user gave none, the default
lung segmenter (`cxr.lungs.segmenter.LungSegmenter.default()`) makes them.

`AutoLungs` holds the segmenter (loaded on first use) and its mask cache (`cxr.lungs.cache`):
`masks(paths)` hashes each file, reads the cached masks and segments the others in batches, with
progress; `crop_region(gray, name)` segments an image held in memory (an upload, an array) for a
lung-crop model. A mask flagged `suspect` by its quality control never fails quietly: a lung crop
takes the whole image instead, with a WARNING naming the image (`suspect_warning`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.config import RunConfig
from cxr.errors import ImageReadError
from cxr.hashing import file_sha256
from cxr.io import read_image
from cxr.lungs.cache import AutoMask, MaskCache, is_auto_region
from cxr.progress import Progress

log = logging.getLogger(__name__)

AUTO = "auto"
BATCH = 32  # images per segmenter call
_SHOWN = 5  # images named in a warning


def suspect_warning(items: Sequence[tuple[str, str]]) -> None:
    """The WARNING naming the images (with the QC's reason) whose lung crop fell back to the whole
    image because their automatic mask is suspect."""
    if not items:
        return
    shown = "; ".join(f"{name} ({reason})" if reason else name for name, reason in items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    log.warning("WARNING: the automatic lung mask of %d image(s) is suspect, so their lung crop is the whole "
                "image: %s%s", len(items), shown, more)


@functools.cache
def default_segmenter(engine: str = "auto") -> Any:
    """The package's default lung segmenter, loaded once per process and engine."""
    from cxr.lungs.segmenter import LungSegmenter

    segmenter = LungSegmenter.default(engine=engine)
    log.info("automatic lungs: the default lung segmenter (weights %s)", segmenter.digest[:12])
    return segmenter


class AutoLungs:
    """The default lung segmenter (or `segmenter`, any object with `digest` and `segment(images)`)
    behind a mask cache below `cache_dir` (default `$CXR_CACHE_DIR/lungs`)."""

    def __init__(self, segmenter: Any = None, *, cache_dir: str | Path | None = None, batch_size: int = BATCH,
                 progress: bool = True, engine: str = "auto") -> None:
        self._segmenter = segmenter
        self._cache: MaskCache | None = None
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.progress = progress
        self.engine = engine
        self._lock = threading.Lock()  # the server segments uploads from several threads

    @property
    def segmenter(self) -> Any:
        """The segmenter, loaded on first use (the default model shipped in the package)."""
        with self._lock:
            if self._segmenter is None:
                self._segmenter = default_segmenter(self.engine)
            return self._segmenter

    def prepare(self) -> AutoLungs:
        """Load the segmenter and build its engine now (a server does it before the first request)."""
        prepare = getattr(self.segmenter, "prepare", None)
        if callable(prepare):
            prepare()
        return self

    @property
    def digest(self) -> str:
        """The segmenter's weights digest (the cache key's model part)."""
        return str(self.segmenter.digest)

    @property
    def cache(self) -> MaskCache:
        if self._cache is None:
            self._cache = MaskCache(self.digest, self.cache_dir)
        return self._cache

    def owns(self, spec: str | None) -> bool:
        """Whether a row's region string was made here (an automatic mask, or a suspect image's whole-image crop)."""
        return is_auto_region(spec, self.cache_dir)

    def segment(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """Masks (bool, each image's size) and QC values of uint8 gray images, in memory (not cached)."""
        segmenter = self.segmenter
        with self._lock:
            results = segmenter.segment(list(images))
        return [(np.asarray(r.mask, dtype=bool), r.qc.to_dict()) for r in results]

    def masks(self, paths: Sequence[str | Path], desc: str = "lung masks") -> list[AutoMask | None]:
        """The automatic mask of every image file (None for one that cannot be read), from the cache
        or made in batches of `batch_size` and cached (files with the same bytes: once); progress."""
        out: list[AutoMask | None] = [None] * len(paths)
        todo: dict[str, list[int]] = {}  # image sha256 -> positions of the files with those bytes
        for i, path in enumerate(paths):
            try:
                sha = file_sha256(path)
            except OSError:
                continue
            out[i] = self.cache.get(sha) if sha not in todo else None
            if out[i] is None:
                todo.setdefault(sha, []).append(i)
        if todo:
            log.info("%s: segmenting %d of %d images (the others cached)", desc, len(todo), len(paths))
            pending = list(todo.items())
            with Progress(len(pending), desc, enabled=self.progress) as bar:
                for start in range(0, len(pending), self.batch_size):
                    chunk = pending[start : start + self.batch_size]
                    self._segment_files(paths, chunk, out)
                    bar.update(len(chunk))
        return out

    def _segment_files(self, paths: Sequence[str | Path], chunk: list[tuple[str, list[int]]],
                       out: list[AutoMask | None]) -> None:
        readable, images = [], []
        for sha, where in chunk:
            try:
                images.append(read_image(paths[where[0]]))
                readable.append((sha, where))
            except ImageReadError as exc:
                log.debug("automatic lungs: %s not segmented: %s", paths[where[0]], exc.reason)
        for (sha, where), (mask, qc) in zip(readable, self.segment(images) if images else [], strict=True):
            found = self.cache.put(sha, mask, qc)
            for i in where:
                out[i] = found

    def crop_region(self, gray: np.ndarray, name: str | None = None) -> np.ndarray:
        """The lung region of an image in memory for a lung-crop model: its automatic mask, or the
        whole image (with a WARNING naming it) when the mask is suspect."""
        (mask, qc), = self.segment([gray])
        if qc.get("flag") != "ok":
            suspect_warning([(name or "<image>", str(qc.get("reason") or ""))])
            return np.ones(gray.shape, dtype=bool)
        return mask

    def crop_masks(self, paths: Sequence[str | Path]) -> list[AutoMask | None]:
        """`masks(paths)` for a lung crop: the images whose mask is suspect are named in a WARNING
        (their crop is the whole image: `region`)."""
        found = self.masks(paths)
        suspect_warning([(str(p), m.reason) for p, m in zip(paths, found, strict=True) if m is not None and m.suspect])
        return found

    @staticmethod
    def region(found: AutoMask | None) -> np.ndarray | None:
        """A cached mask as a lung-crop region: the mask, all True (the whole image) when it is
        suspect, None when there is none."""
        if found is None:
            return None
        if found.suspect:
            return np.ones((found.height, found.width), dtype=bool)
        return read_image(found.path) > 127

    def fill_regions(self, items: Sequence[Any], regions: Sequence[Any]) -> list[Any]:
        """A lung-crop model's regions of `items` (a batch of inputs): each file path without a region
        gets its cached automatic one; other inputs are segmented later (`crop_region`)."""
        wanted = [i for i, (item, region) in enumerate(zip(items, regions, strict=True))
                  if region is None and isinstance(item, str | Path)]
        out = list(regions)
        for i, found in zip(wanted, self.crop_masks([items[i] for i in wanted]) if wanted else [], strict=True):
            out[i] = self.region(found)
        return out

    def outline_region(self, path: str | Path) -> np.ndarray | None:
        """The automatic mask of one image file for drawing its outline; None (with a warning) when it
        is suspect or the image cannot be read."""
        (found,) = self.masks([path])
        if found is None:
            return None
        if found.suspect:
            log.warning("WARNING: the automatic lung mask of %s is suspect (%s): no lung outline drawn (a lung crop "
                        "is the whole image)", path, found.reason)
            return None
        return read_image(found.path) > 127


def auto_lungs_of(cfg: RunConfig, *, progress: bool = True, segmenter: Any = None) -> AutoLungs | None:
    """The automatic lungs of a run's config: an `AutoLungs` when `data.lungs` is auto, else None."""
    if cfg.data.lungs != AUTO:
        return None
    return AutoLungs(segmenter, progress=progress, batch_size=max(1, min(cfg.train.batch_size, BATCH)))
