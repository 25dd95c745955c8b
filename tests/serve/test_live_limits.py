"""`cxr serve` as a real subprocess on 127.0.0.1: slow clients, aborted uploads and a huge 16-bit PNG.

Acceptance of the hardening: with the default options, 70 slow connections (some never finishing
their headers, some sending body bytes slowly) do not stop /v1/health answering 200 within 10 s, each
is dropped within 30 s, each drop is one log line, and nothing logs a traceback. A 16-bit 7000x7000
PNG raises the server's peak RSS by less than 300 MB. Every loop here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import SERVER_START_TIMEOUT_S

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
SLOW_HEADERS, SILENT, SLOW_BODIES = 30, 10, 30  # 70 slow connections in all
HEALTH_WITHIN_S = 10.0
DROPPED_WITHIN_S = 30.0
TRICKLE_EVERY_S = 1.0
RSS_RISE_LIMIT_MB = 300
PROC_START_TIMEOUT_S = 4 * SERVER_START_TIMEOUT_S


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m cxr serve CHECKPOINT` with default options on a free loopback port; its log in a file."""

    def __init__(self, checkpoint: Path) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="cxr-serve-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [sys.executable, "-m", "cxr", "serve", str(checkpoint), "--host", HOST, "--port", str(self.port),
               "--device", "cpu"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PROC_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cxr serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"cxr serve did not answer within {PROC_START_TIMEOUT_S:.0f} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        Path(self.log.name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def server(run_checkpoint: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(run_checkpoint)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------- slow clients


async def _slow_client(port: int, opening: bytes, trickle: bytes | None) -> float | None:
    """Send `opening`, then one `trickle` byte a second (None: nothing more); the seconds until the
    server closed the connection, or None when it was still open after `DROPPED_WITHIN_S`."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port)
    start = loop.time()
    try:
        writer.write(opening)
        await writer.drain()
        while loop.time() - start < DROPPED_WITHIN_S:
            try:
                if await asyncio.wait_for(reader.read(4096), TRICKLE_EVERY_S) == b"":
                    return loop.time() - start
            except TimeoutError:
                pass
            if trickle:
                writer.write(trickle)
                await writer.drain()
        return None
    except (ConnectionError, OSError):
        return loop.time() - start
    finally:
        writer.close()


async def _slowloris(server: ServeProcess) -> tuple[list[float | None], list[float]]:
    headers_start = f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode()
    body_start = (f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  f"Content-Length: 100000\r\n\r\n--b\r\n").encode()
    clients = ([_slow_client(server.port, headers_start, b"a") for _ in range(SLOW_HEADERS)]
               + [_slow_client(server.port, b"", None) for _ in range(SILENT)]
               + [_slow_client(server.port, body_start, b"x") for _ in range(SLOW_BODIES)])
    tasks = [asyncio.create_task(c) for c in clients]
    await asyncio.sleep(1.0)  # all connected and sending
    health: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=HEALTH_WITHIN_S) as client:
        for _ in range(3):  # while the slow connections are open
            t0 = time.perf_counter()
            r = await client.get("/v1/health")
            assert r.status_code == 200, r.text
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(2.0)
    return await asyncio.gather(*tasks), health


def test_slow_clients_do_not_block_and_are_dropped(server: ServeProcess) -> None:
    dropped, health = asyncio.run(asyncio.wait_for(_slowloris(server), 3 * DROPPED_WITHIN_S))
    assert max(health) < HEALTH_WITHIN_S
    assert all(d is not None and d < DROPPED_WITHIN_S for d in dropped), dropped
    assert httpx.get(server.url + "/v1/health", timeout=10).status_code == 200
    time.sleep(0.5)
    log = server.output()
    assert "Traceback" not in log, log[-4000:]
    assert log.count("request headers not received within") >= SLOW_HEADERS + SILENT
    assert log.count("dropped slow upload from") == SLOW_BODIES


def test_aborted_upload_and_early_answer(server: ServeProcess) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as s:  # goes away mid-body
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 5000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"")
        time.sleep(0.3)
    with socket.create_connection((HOST, server.port), timeout=10) as s:  # answered before its body: closed
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\n\r\n")
        answer = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (chunk := s.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 415") and chunk == b""
    time.sleep(0.5)
    log = server.output()
    assert "went away during POST /v1/predict" in log and "Traceback" not in log, log[-4000:]


# -------------------------------------------------------------------------------------- memory


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_huge_16_bit_png_raises_rss_by_less_than_300_mb(server: ServeProcess, tmp_path: Path, png_bytes: bytes) -> None:
    from ..test_io import big_16_bit_png

    png = big_16_bit_png(tmp_path / "big16.png").read_bytes()
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.post("/v1/predict", files={"file": ("warm.png", png_bytes, "image/png")}).status_code == 200
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # reset the peak RSS
        base = server.status_mb("VmRSS:")
        r = client.post("/v1/predict", files={"file": ("big16.png", png, "image/png")})
        rise = server.status_mb("VmHWM:") - base
    assert r.status_code == 200, r.text
    assert rise < RSS_RISE_LIMIT_MB, f"peak RSS rose by {rise:.0f} MB"
