"""HTTP serving of a trained checkpoint: `create_app` (FastAPI) and the web page in `static/`.

Needs the `serve` extra (fastapi, uvicorn, python-multipart); imported only by `cxr serve` and tests.
"""
