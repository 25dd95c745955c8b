"""`cxr serve`: a checkpoint behind the HTTP API and the web page, with the limits that keep it safe."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cxr.cli._common import ENGINE_HELP, THREADS_HELP, add_command, existing_path, non_negative_int
from cxr.cli.predict import DEVICE_HELP
from cxr.config import EVAL_ENGINES, LUNGS_CHOICES
from cxr.errors import CxrError
from cxr.serve.limits import ServeLimits, read_api_key

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cxr serve` to the `cxr` parser."""
    _register_serve(sub)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", cmd_serve, "serve a checkpoint over HTTP (API + web page)",
                    description="Start the HTTP API (POST /v1/predict, POST /v1/predict/batch, POST /v1/explain, "
                    "GET /v1/health, GET /v1/model), the web page at / and the API docs at /docs with uvicorn. "
                    "Needs the `serve` extra. The limits below keep a server reachable from other machines "
                    "safe: slow clients are dropped, decode cost and queue length are bounded.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="interface to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, metavar="N", help="TCP port")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--engine", choices=EVAL_ENGINES, default="auto", metavar="NAME",
                   help=ENGINE_HELP + "; tuned for latency (one request at a time); explain always runs on PyTorch")
    p.add_argument("--threads", type=non_negative_int, default=0, metavar="N", help=THREADS_HELP)
    p.add_argument("--lungs", choices=LUNGS_CHOICES, metavar="MODE",
                   help="a lung-crop model's uploads without a 'box' field: auto = crop to the built-in lung "
                        "segmenter's mask (suspect: the whole image, logged); masks = refuse them (422) "
                        "(default: the checkpoint's data.lungs, auto)")
    p.add_argument("--api-key-file", type=Path, metavar="FILE",
                   help="require the key in FILE (first line, at least 16 characters) on every /v1/* request, "
                   "as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    p.add_argument("--no-docs", action="store_true", help="do not serve the API docs at /docs")
    p.add_argument("--reject-ood", action="store_true",
                   help="answer 422 with the reason, instead of a prediction, for an input that is not like the "
                        "training X-rays (colour, near-constant, odd shape, or far from them in feature space)")
    limits = p.add_argument_group("limits")
    defaults = ServeLimits()
    limits.add_argument("--max-body-mb", type=float, default=defaults.max_body_mb, metavar="MB",
                        help="largest request body in MB (a batch counts whole)")
    limits.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="largest image, width x height; it may decode to at most 2 bytes per pixel")
    limits.add_argument("--max-files", type=int, default=defaults.max_files,
                        help="most images in one POST /v1/predict/batch")
    limits.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="images accepted and not yet answered; more get 503 with a Retry-After header")
    limits.add_argument("--limit-concurrency", type=int, default=defaults.limit_concurrency,
                        help="open connections and requests; more get 503")
    limits.add_argument("--timeout", type=float, default=defaults.timeout_s,
                        help="seconds for a request's headers, and then for its whole body, to arrive; "
                        "slower clients are dropped")
    limits.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s,
                        help="most seconds without a byte of a request body")


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from cxr.serve.app import serve
    except ImportError as exc:
        raise CxrError(f"cxr serve needs the serve extra (pip install 'cxr[serve]'): {exc}") from None
    from cxr.predict import Predictor

    if not 0 < args.port < 65536:
        raise CxrError(f"--port must be 1..65535, got {args.port}")
    limits = ServeLimits(max_body_mb=args.max_body_mb, max_pixels=args.max_pixels, max_files=args.max_files,
                         max_queue=args.max_queue, limit_concurrency=args.limit_concurrency,
                         timeout_s=args.timeout, idle_timeout_s=args.idle_timeout)
    from cxr.runtime import set_threads

    api_key = read_api_key(args.api_key_file) if args.api_key_file is not None else None
    from cxr.serve.port import check_port

    check_port(args.host, args.port)  # a port in use: one line, before the model is loaded
    set_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, engine=args.engine,
                                          batch_size=1, hint="latency", lungs=args.lungs)  # measured for single requests
    if predictor.lung_crop is not None and predictor.auto_lungs is not None:
        predictor.auto_lungs.prepare()  # uploads without a box: the lung segmenter, ready before the first one
    log.info("serving %s on http://%s:%d/ (Ctrl-C to stop)", predictor.name, args.host, args.port)
    serve(predictor, host=args.host, port=args.port, limits=limits, api_key=api_key, docs_ui=not args.no_docs,
          reject_ood=args.reject_ood)
    return 0
