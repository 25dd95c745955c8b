"""Bounded load test of `cxr serve` on this machine: p50/p99 latency, requests/s and the server's peak
RSS per concurrency level.

    python bench/load.py --url http://127.0.0.1:8000                 # a server that is running
    python bench/load.py --checkpoint runs/demo/checkpoints/best.pt  # starts one, stops it after

Only loopback addresses are accepted (127.0.0.1, localhost, ::1): this is not a tool for loading
other people's servers. Each concurrency level sends at most --requests requests and stops after
--time-cap seconds, whichever comes first; the whole run always ends by itself. The result is one
JSON document on stdout (progress on stderr).

The server's memory is read from /proc (Linux): for a server this script starts, or one named with
--server-pid. Before each level its peak RSS is reset (/proc/PID/clear_refs), so `server_peak_rss_mb`
is that level's peak; where the reset is not allowed it is the peak since the server started.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_LEVELS = (1, 8, 32)
WARMUP_REQUESTS = 3
REQUEST_TIMEOUT_S = 60.0
SERVER_START_TIMEOUT_S = 180.0


def check_loopback(url: str) -> str:
    """The URL without a trailing slash; ValueError unless it is http:// on a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise ValueError(f"refusing {url!r}: only http://127.0.0.1, http://localhost or http://[::1] are allowed")
    return url.rstrip("/")


def load_image(path: Path | None, size: int) -> tuple[bytes, str]:
    """The image to post: a file, or a synthetic chest X-ray PNG."""
    if path is not None:
        return path.read_bytes(), path.name
    from PIL import Image

    from cxr.data.synthetic import make_image

    buf = io.BytesIO()
    Image.fromarray(make_image("Normal", np.random.default_rng(0), size=size)).save(buf, format="PNG")
    return buf.getvalue(), "synthetic.png"


async def run_level(url: str, image: bytes, name: str, concurrency: int, total: int, time_cap: float) -> dict:
    """Send up to `total` requests with `concurrency` in flight, for at most `time_cap` seconds."""
    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: dict[str, int] = {}
    issued = 0
    start = time.perf_counter()
    deadline = start + time_cap
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", files={"file": (name, image, "image/png")})
                    key = str(r.status_code)
                    if r.status_code == 200:
                        server_ms.append(float(r.json()["latency_ms"]))
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(1000 * (time.perf_counter() - t0))
                statuses[key] = statuses.get(key, 0) + 1

        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))),
                                   timeout=time_cap + REQUEST_TIMEOUT_S)
        except TimeoutError:
            statuses["cut_off"] = statuses.get("cut_off", 0) + 1
    elapsed = time.perf_counter() - start
    ok = statuses.get("200", 0)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "ok": ok,
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "req_per_s": round(ok / elapsed, 2) if elapsed > 0 else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "mean_ms": round(float(np.mean(lat)), 1),
        "server_p50_ms": round(float(np.percentile(server_ms, 50)), 1) if server_ms else None,
    }


def server_memory(pid: int | None) -> dict[str, float] | None:
    """{'rss_mb', 'peak_rss_mb'} of process `pid` from /proc, or None when it cannot be read."""
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in lines if ":" in line)
              if k in ("VmRSS", "VmHWM")}
    if len(values) != 2:
        return None
    return {"rss_mb": round(values["VmRSS"], 1), "peak_rss_mb": round(values["VmHWM"], 1)}


def reset_peak_rss(pid: int | None) -> bool:
    """Reset the peak RSS of `pid` (Linux >= 4.0, same user); False where that is not possible."""
    if pid is None:
        return False
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int) -> subprocess.Popen:
    """`python -m cxr serve CHECKPOINT` on 127.0.0.1:port; returns once /v1/health answers."""
    cmd = [sys.executable, "-m", "cxr", "-q", "serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr, env=dict(os.environ))
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"the server did not answer within {SERVER_START_TIMEOUT_S:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (loopback only)")
    target.add_argument("--checkpoint", type=Path, help="start `cxr serve CHECKPOINT` on a free port for the test")
    parser.add_argument("--image", type=Path, help="image to post (default: a synthetic 299x299 X-ray PNG)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(DEFAULT_LEVELS), help="concurrency levels")
    parser.add_argument("--requests", type=int, default=200, help="requests per level (at most)")
    parser.add_argument("--time-cap", type=float, default=30.0, help="seconds per level (at most)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process id, to report its RSS")
    args = parser.parse_args(argv)
    if min(args.levels) < 1 or args.requests < 1 or args.time_cap <= 0:
        parser.error("levels and --requests must be >= 1 and --time-cap > 0")
    if args.url is not None:
        try:
            url = check_loopback(args.url)
        except ValueError as exc:
            parser.error(str(exc))

    image, name = load_image(args.image, 299)
    proc = None
    if args.checkpoint is not None:
        port = free_port()
        print(f"starting cxr serve on 127.0.0.1:{port}", file=sys.stderr)
        proc = start_server(args.checkpoint, port)
        url = f"http://127.0.0.1:{port}"
    pid = proc.pid if proc is not None else args.server_pid
    per_level = True
    try:
        health = httpx.get(url + "/v1/health", timeout=10).json()
        asyncio.run(run_level(url, image, name, 1, WARMUP_REQUESTS, args.time_cap))
        idle = server_memory(pid)
        levels = []
        for level in args.levels:
            print(f"concurrency {level}: up to {args.requests} requests / {args.time_cap:g} s", file=sys.stderr)
            per_level = reset_peak_rss(pid) and per_level
            row = asyncio.run(run_level(url, image, name, level, args.requests, args.time_cap))
            memory = server_memory(pid)
            row["server_peak_rss_mb"] = memory["peak_rss_mb"] if memory else None
            row["server_rss_mb"] = memory["rss_mb"] if memory else None
            levels.append(row)
    finally:
        if proc is not None:
            stop_server(proc)
    result = {"url": url, "model": health.get("model"), "device": health.get("device"), "image": name,
              "image_bytes": len(image), "requests_per_level": args.requests, "time_cap_s": args.time_cap,
              "cpu_count": os.cpu_count(), "server_pid": pid,
              "server_idle_rss_mb": idle["rss_mb"] if idle else None,
              "peak_rss_scope": ("per level" if per_level else "since server start") if idle else None,
              "levels": levels}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
