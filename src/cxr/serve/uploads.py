"""Uploaded images: the multipart field `file` (several of them for a batch) or a raw image body.

A type or extension that is not an image is 415, an image that does not decode (or is over the
decode limits) is 422, a batch with more files than allowed is 413. For a batch the type check is
per file, so one bad file is reported in its own result and does not fail the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from cxr.errors import ImageReadError
from cxr.io import IMAGE_EXTENSIONS, DecodeLimits, read_image_bytes

IMAGE_FIELD = "file"
CLASS_FIELD = "class"
RAW_IMAGE_TYPES = frozenset({"application/octet-stream", "application/dicom"})
MULTIPART = "multipart/form-data"
MAX_FORM_FIELDS = 8
_UNNAMED = "<upload>"


@dataclass
class Upload:
    """One uploaded image, or why it cannot be used (`error`: an HTTPException for its result)."""

    data: bytes
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    error: HTTPException | None = None


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def check_image_type(name: str, content_type: str) -> None:
    """415 unless the file name's extension (when it has one) and the content type look like an image."""
    suffix = PurePath(name).suffix.lower()
    allowed_ext = ", ".join(sorted(IMAGE_EXTENSIONS))
    if suffix and suffix not in IMAGE_EXTENSIONS:
        raise HTTPException(415, f"unsupported file type {suffix!r} ({name}); allowed: {allowed_ext}")
    if content_type and not (content_type.startswith("image/") or content_type in RAW_IMAGE_TYPES):
        raise HTTPException(
            415, f"unsupported content type {content_type!r}; send an image (image/*, application/dicom)"
        )


async def read_upload(request: Request) -> Upload:
    """The uploaded image: multipart field `file`, or the whole body when it has an image type."""
    content_type = media_type(request.headers.get("content-type"))
    if content_type == MULTIPART:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        try:
            part = form.get(IMAGE_FIELD)
            if not isinstance(part, UploadFile):
                raise HTTPException(422, f"multipart field {IMAGE_FIELD!r} with the image file is missing")
            name = part.filename or _UNNAMED
            check_image_type(name, media_type(part.content_type))
            data = await part.read()
            fields = {**request.query_params, **{k: v for k, v in form.items() if isinstance(v, str)}}
        finally:
            await form.close()
        return Upload(data=data, name=name, fields=fields)
    if content_type.startswith("image/") or content_type in RAW_IMAGE_TYPES:
        data = await request.body()
        return Upload(data=data, name=_UNNAMED, fields=dict(request.query_params))
    shown = content_type or "none"
    raise HTTPException(
        415, f"unsupported content type {shown!r}; post multipart/form-data with field {IMAGE_FIELD!r} or an image body"
    )


async def read_batch(request: Request, max_files: int) -> list[Upload]:
    """Every multipart `file` part in order (at most `max_files`); a part that is not an image file
    comes back with its `error` set instead of failing the request."""
    if media_type(request.headers.get("content-type")) != MULTIPART:
        raise HTTPException(415, f"post multipart/form-data with one {IMAGE_FIELD!r} part per image")
    try:
        form = await request.form(max_files=max_files, max_fields=max_files + MAX_FORM_FIELDS)
    except HTTPException as exc:
        if exc.status_code == 400 and "too many files" in str(exc.detail).lower():
            raise HTTPException(413, f"at most {max_files} files in one batch request") from None
        raise
    try:
        uploads = [await _batch_part(part, i) for i, part in enumerate(form.getlist(IMAGE_FIELD))]
    finally:
        await form.close()
    if not uploads:
        raise HTTPException(422, f"no multipart {IMAGE_FIELD!r} parts: send one per image")
    return uploads


async def _batch_part(part: UploadFile | str, index: int) -> Upload:
    if not isinstance(part, UploadFile):
        return Upload(b"", f"<part {index}>", error=HTTPException(422, f"part {index} of {IMAGE_FIELD!r} is not a file"))
    name = part.filename or f"<part {index}>"
    try:
        check_image_type(name, media_type(part.content_type))
    except HTTPException as exc:
        return Upload(b"", name, error=exc)
    return Upload(await part.read(), name)


def decode(upload: Upload, limits: DecodeLimits, min_side: int | None = None) -> np.ndarray:
    """uint8 (H, W) of an upload; 422 naming the file when it does not decode or is over the limits."""
    try:
        return read_image_bytes(upload.data, upload.name, limits=limits, min_side=min_side)
    except ImageReadError as exc:
        raise HTTPException(422, f"cannot decode the image: {exc}") from None
