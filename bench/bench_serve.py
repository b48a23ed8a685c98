"""`chessvlm serve` under load: concurrent clients on loopback, batched against unbatched.

    OMP_NUM_THREADS=1 python bench/bench_serve.py [--clients 1 8 32] [--requests 2000]
        [--seconds 60] [--size 512] [--boards 64] [--workers 1] [--onnx DIR]

Starts `chessvlm serve` in its own process with the shipped reader: as it starts by default
(the board finder looks for boards in each upload; batching up to 16 boards a model call,
gathered for up to 2 ms), then with `--no-detect` (each upload read as one cropped board),
as the baseline with `--no-detect --max_batch 1` (each request its own model call), and with
`--onnx DIR` also on the reader's ONNX export in DIR (`chessvlm export --format onnx --out
DIR`: onnxruntime, `--no-detect`).
Against each, for each number of clients, that many clients on loopback post boards as raw
PNG bodies (each client one request at a time, all sharing one asyncio loop and connection
pool) until `--requests` answers or `--seconds` have passed.

Boards are `--size` px renders cut to their squares in the `designs-seen` looks (the reader
was trained on those), so "wrong" counts boards whose placement came back different.
For each run it prints throughput (boards/s), p50/p99 latency, errors (non-200 answers),
lost requests (sent without any answer: transport errors and timeouts), and the server's
resident memory (all its processes) after a tenth and half of the requests and at the end,
and the CPU time the server and the clients spent per answer (user + system: a figure that
other jobs on the machine change less than wall-clock throughput).

The clients run on the same CPU as the server; on a shared 2-core machine both compete with
other jobs, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import chess
import httpx
import psutil

from chessvlm.rendering import render_board, sample_render_params
from chessvlm.sources import synthetic_positions

HEALTH_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 30
FINDER = "finder + torch, batched (default)"
BATCHED = "torch, batched, --no-detect"
UNBATCHED = "torch, unbatched (--max_batch 1), --no-detect"
ONNX = "onnxruntime, batched, --no-detect"


@dataclasses.dataclass
class Run:
    """One load level's outcome."""

    server: str
    clients: int
    answered: int = 0
    errors: int = 0
    lost: int = 0
    wrong: int = 0
    seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    memory_mb: list[float] = dataclasses.field(default_factory=list)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    def row(self) -> str:
        """A Markdown table row."""
        ordered = sorted(self.latencies) or [float("nan")]
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        memory = " -> ".join(f"{value:.0f}" for value in self.memory_mb)
        return (
            f"| {self.server} | {self.clients} | {self.answered} | "
            f"{self.answered / self.seconds:.1f} | {1000 * statistics.median(ordered):.0f} | "
            f"{1000 * p99:.0f} | {self.errors} | {self.lost} | {self.wrong} | {memory} | "
            f"{1000 * self.server_cpu_s / self.answered:.1f} | "
            f"{1000 * self.client_cpu_s / self.answered:.1f} |"
        )


def make_boards(count: int, size: int) -> list[tuple[bytes, str]]:
    """`count` PNG boards cut to their squares, with their placements."""
    rng = random.Random(0)
    boards = []
    for position in synthetic_positions(count, "bench-serve"):
        look = sample_render_params("designs-seen", rng)
        look = dataclasses.replace(
            look, size=size, margin=(0, 0, 0, 0), frame="none", coordinate_place="inside"
        )
        board = chess.Board(position.fen)
        buffer = io.BytesIO()
        render_board(board, look).convert("RGB").save(buffer, "PNG")
        boards.append((buffer.getvalue(), board.board_fen()))
    return boards


@contextmanager
def running_server(flags: list[str]) -> Iterator[tuple[str, psutil.Process]]:
    """`chessvlm serve FLAGS` on a free port: its URL and process, once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "chessvlm", "serve", "--port", str(port), *flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while httpx.get(f"{url}/api/health").status_code != 200 if _listening(port) else True:
            if server.poll() is not None or time.monotonic() - started > HEALTH_TIMEOUT_S:
                raise SystemExit(f"chessvlm serve {' '.join(flags)} did not start")
            time.sleep(0.3)
        yield url, psutil.Process(server.pid)
    finally:
        server.terminate()
        server.wait()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def resident_mb(process: psutil.Process) -> float:
    """Resident memory of the server and its worker processes, in MB."""
    return sum(each.memory_info().rss for each in _family(process)) / 2**20


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time (user + system) of `process` and its worker processes so far."""
    return sum(sum(each.cpu_times()[:2]) for each in _family(process))


def _family(process: psutil.Process) -> list[psutil.Process]:
    return [process, *process.children(recursive=True)]


async def load(url: str, run: Run, boards, requests: int, seconds: float, server) -> None:
    """`run.clients` clients posting boards until `requests` answers or `seconds` pass."""
    sent = 0
    # Memory is sampled after a tenth and half of the requests, and at the end.
    checkpoints = {max(1, requests // 10), max(1, requests // 2)}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=run.clients, max_keepalive_connections=run.clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            body, placement = boards[sent % len(boards)]
            sent += 1
            began = time.perf_counter()
            try:
                response = await http.post(
                    f"{url}/api/read", content=body, headers={"content-type": "image/png"}
                )
            except httpx.TransportError:
                run.lost += 1
                continue
            run.latencies.append(time.perf_counter() - began)
            run.answered += 1
            if response.status_code != 200:
                run.errors += 1
            elif response.json()["boards"][0]["fen"].split()[0] != placement:
                run.wrong += 1
            if run.answered in checkpoints:
                run.memory_mb.append(resident_mb(server))

    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
        started = time.perf_counter()
        cpu = (cpu_seconds(server), time.process_time())
        await asyncio.gather(*(client(http) for _ in range(run.clients)))
        run.seconds = time.perf_counter() - started
        run.server_cpu_s = cpu_seconds(server) - cpu[0]
        run.client_cpu_s = time.process_time() - cpu[1]
    run.memory_mb.append(resident_mb(server))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="answers per run")
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound per run")
    parser.add_argument("--size", type=int, default=512, help="board side in px")
    parser.add_argument("--boards", type=int, default=64, help="distinct boards sent in turn")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--onnx", help="also serve this ONNX export of the shipped reader")
    args = parser.parse_args()
    boards = make_boards(args.boards, args.size)
    servers = {FINDER: [], BATCHED: ["--no-detect"]}
    if args.baseline:
        servers[UNBATCHED] = ["--no-detect", "--max_batch", "1"]
    if args.onnx:
        servers[ONNX] = ["--no-detect", "--model", args.onnx]
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(
        f"{len(boards)} boards of {args.size} px ({len(boards[0][0]) // 1024} KB PNG), "
        f"{args.workers} server process(es), OMP_NUM_THREADS={threads}, "
        f"{psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| server | clients | answers | boards/s | p50 ms | p99 ms | errors | lost | wrong "
        "| server memory MB (10% -> 50% -> end) | server CPU ms/board | client CPU ms/board |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    throughput: dict[tuple[str, int], float] = {}
    for name, flags in servers.items():
        with running_server([*flags, "--workers", str(args.workers)]) as (url, process):
            for clients in args.clients:
                run = Run(name, clients)
                asyncio.run(load(url, run, boards, args.requests, args.seconds, process))
                throughput[name, clients] = run.answered / run.seconds
                print(run.row(), flush=True)
    print()
    for clients in args.clients:
        ratio = throughput[FINDER, clients] / throughput[BATCHED, clients]
        print(f"{clients} clients: throughput with the finder / without = {ratio:.2f}x")
        if args.baseline:
            ratio = throughput[BATCHED, clients] / throughput[UNBATCHED, clients]
            print(f"{clients} clients: throughput batched / unbatched (torch) = {ratio:.2f}x")
        if args.onnx:
            ratio = throughput[ONNX, clients] / throughput[BATCHED, clients]
            print(f"{clients} clients: throughput onnxruntime / torch (batched) = {ratio:.2f}x")


if __name__ == "__main__":
    main()
