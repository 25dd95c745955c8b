"""HTTP serving of a trained checkpoint: `create_app` (FastAPI) and the web page in `static/`.

Modules: `app` (endpoints, `serve`), `limits` (`ServeLimits`, API key file), `guard` (API key, body
size and deadlines), `protocol` (request-header deadline in uvicorn), `uploads`, `worker` (the model's
thread and the bounded queue), `docs` (OpenAPI upload schemas, local /docs), `modelcard`.
Needs the `serve` extra (fastapi, uvicorn, python-multipart, swagger-ui-bundle) except `limits`;
imported only by `cxr serve` and tests.
"""
