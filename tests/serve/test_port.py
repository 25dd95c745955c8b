"""`cxr serve` on a port in use: one clear line and exit 2, before the model loads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cxr.cli import main
from cxr.errors import CxrError
from cxr.serve.port import check_port


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line(busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CxrError, match=f"port {busy_port} on 127.0.0.1 is already in use"):
        check_port("127.0.0.1", busy_port)
    checkpoint = tmp_path / "model.pt"  # never loaded: the port is checked first
    checkpoint.write_bytes(b"not a checkpoint")
    assert main(["serve", str(checkpoint), "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: port {busy_port} on 127.0.0.1 is already in use (another server?); stop it, or "
                   "choose another --port"]


def test_a_free_port_and_a_bad_host() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    check_port("127.0.0.1", free)  # no error
    with pytest.raises(CxrError, match="--host 'no-such-host.invalid' is not an address of this machine"):
        check_port("no-such-host.invalid", free)
