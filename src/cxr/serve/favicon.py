"""The page's icon: GET /favicon.ico (what browsers ask for unprompted) and /favicon.svg, one small SVG,
so the log shows no 404 for every page load."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

ICON = "favicon.svg"
ICON_TYPE = "image/svg+xml"


def add_favicon(app: FastAPI) -> None:
    """Serve the icon at /favicon.ico and /favicon.svg (outside the API schema; no key needed)."""
    icon = resources.files("cxr.serve").joinpath("static", ICON).read_bytes()

    async def favicon() -> Response:
        return Response(icon, media_type=ICON_TYPE, headers={"Cache-Control": "public, max-age=86400"})

    for path in ("/favicon.ico", "/favicon.svg"):
        app.add_api_route(path, favicon, methods=["GET"], include_in_schema=False)
