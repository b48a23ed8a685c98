"""Board images as uploads, and the `chessvlm serve` command running on a free port."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import chess
import httpx

from chessvlm.rendering import RenderParams, render_board

# Positions the shipped reader reads right at 512 px (checked by the tests that use them).
FENS = (
    chess.STARTING_FEN,
    "r1bqkb1r/pppp1ppp/2n2n2/4p3/2B1P3/5N2/PPPP1PPP/RNBQK2R w KQkq - 4 4",
)


def board_png(fen: str = chess.STARTING_FEN, size: int = 512, **look) -> bytes:
    """A rendered board as PNG bytes."""
    buffer = io.BytesIO()
    render_board(chess.Board(fen), RenderParams(size=size, **look)).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_command(*flags: str, log: Path) -> Iterator[str]:
    """Run `chessvlm serve` on a free loopback port until the block ends; yields its base URL
    once `/api/health` answers. Its output goes to `log`."""
    port = free_port()
    command = [sys.executable, "-m", "chessvlm", "serve", "--port", str(port), *flags]
    with open(log, "wb") as output:
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_until_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"chessvlm serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"chessvlm serve did not answer within 60 s: {log.read_text()[-2000:]}")
