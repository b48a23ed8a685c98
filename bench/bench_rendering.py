"""Rendering throughput: the fast compositing path against the plain SVG path, in one run.

Each measurement draws boards from random games with the `mixed` style pinned to one size,
encodes them (PNG or JPEG) and writes them to a temporary folder through
`chessvlm.rendering.render_many`, with 1 and 2 worker processes. Worker start-up and the
per-process piece-bitmap caches warming up are inside the timing. The SVG path draws only
plain looks, so it gets each sample's `plain_look`.

Then, drawing only: the fast path on the mixed samples with all their looks and on the same
samples in their plain look, and one look at a time on a fixed set and theme (`--looks`).

    OMP_NUM_THREADS=1 python bench/bench_rendering.py [--count 2000] [--svg-count 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import tempfile
import time

import chess

from chessvlm.rendering import (
    STYLES,
    RenderJob,
    RenderParams,
    image_extension,
    plain_look,
    render_board,
    render_board_svg,
    render_many,
)

# Issue 2's targets with 2 workers (fast path, encoding and writing included).
TARGETS = {224: 500.0, 512: 150.0}


def random_positions(count: int, seed: int) -> list[tuple[str, str | None]]:
    """(FEN, last move in UCI) from random games, from the opening to sparse endgames."""
    rng = random.Random(seed)
    positions: list[tuple[str, str | None]] = []
    board = chess.Board()
    while len(positions) < count:
        moves = list(board.legal_moves)
        if not moves or board.ply() > 200:
            board = chess.Board()
            continue
        move = rng.choice(moves)
        board.push(move)
        positions.append((board.fen(), move.uci()))
    return positions


def render_plain_svg(board, params, last_move):
    """The SVG reference for a sample's plain look (module level: picklable for workers)."""
    return render_board_svg(board, plain_look(params), last_move)


# One look at a time, on cburnett/brown boards (the look fields of `RenderParams`).
LOOKS = {
    "plain": {},
    "odd side (+5 px)": {"size": 5},
    "coordinates inside, chess glyphs": {"coordinates": True},
    "coordinates inside, DejaVu Sans": {"coordinates": True, "coordinate_font": "sans"},
    "coordinates outside, DejaVu Serif": {
        "coordinates": True,
        "coordinate_place": "outside",
        "coordinate_font": "serif",
    },
    "margin, plain colour": {"margin": (20, 20, 20, 20)},
    "margin, page": {"margin": (40, 30, 40, 30), "background": "page"},
    "margin, window": {"margin": (20, 40, 20, 20), "background": "window"},
    "frame line": {"frame": "line"},
    "frame thick": {"frame": "thick"},
    "frame bevel": {"frame": "bevel"},
    "frame wood": {"frame": "wood"},
    "last move": {"highlight_move": True},
    "check glow": {"show_check": True},
    "selected square": {"selected": True},
    "2 arrows": {"arrows": ((12, 28, "green"), (6, 21, "red"))},
    "2 circles": {"circles": ((36, "blue"), (20, "yellow"))},
    "texture wood": {"texture": "wood"},
    "texture marble": {"texture": "marble"},
    "hatched dark squares": {"texture": "hatch"},
    "grayscale": {"grayscale": True},
    "low-res 16 px, bicubic": {"lowres": 16},
    "low-res 16 px, lanczos": {"lowres": 16, "upscale": "lanczos"},
}


def per_look(size: int, count: int, seed: int) -> list[tuple[str, float]]:
    """Boards drawn per CPU second for each look alone (warm caches, 1 process)."""
    positions = random_positions(count, seed)
    rows = []
    for name, look in LOOKS.items():
        look = {**look, "size": size + look.get("size", 0)}
        params = dataclasses.replace(RenderParams("cburnett", "brown", size), **look)
        boards = [(chess.Board(fen), chess.Move.from_uci(move)) for fen, move in positions]
        for board, move in boards[:5]:
            render_board(board, params, move)
        start = time.process_time()
        for board, move in boards:
            render_board(board, params, move)
        rows.append((name, len(boards) / (time.process_time() - start)))
    return rows


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(jobs: list[RenderJob], workers: int, renderer) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second for drawing, encoding and writing.

    On a machine shared with other work the wall-clock rate understates what the code does;
    `workers` times the CPU rate is what the same run would reach with its cores to itself.
    """
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in render_many(jobs, workers=workers, renderer=renderer):
        pass
    return len(jobs) / (time.perf_counter() - wall), len(jobs) / (cpu_seconds() - cpu)


def make_jobs(size: int, fmt: str, count: int, folder: str, seed: int) -> list[RenderJob]:
    """`count` jobs in the mixed style at one size, all PNG or all JPEG."""
    style = dataclasses.replace(
        STYLES["mixed"], sizes=(size,), jpeg_rate=1.0 if fmt == "jpeg" else 0.0
    )
    rng = random.Random(seed)
    jobs = []
    for index, (fen, move) in enumerate(random_positions(count, seed)):
        params = style.sample(rng)
        path = f"{folder}/{index:06d}{image_extension(params)}"
        jobs.append(RenderJob(fen, params, path, move))
    return jobs


def draw_only(size: int, count: int, svg_count: int, seed: int) -> tuple[float, float, float]:
    """Boards drawn per CPU second, one process, no encoding or writing: (fast with every
    look, fast in the same samples' plain looks, SVG in the plain looks).

    The fast path's caches are warmed by a first pass, so this is its steady state."""
    boards = [
        (chess.Board(job.fen), job.params, chess.Move.from_uci(job.last_move))
        for job in make_jobs(size, "png", count, "unused", seed)
    ]
    plain = [(board, plain_look(params), move) for board, params, move in boards]
    rates = []
    for renderer, sample in (
        (render_board, boards),
        (render_board, plain),
        (render_board_svg, plain[:svg_count]),
    ):
        for board, params, move in sample:
            renderer(board, params, move)
        start = time.process_time()
        for board, params, move in sample:
            renderer(board, params, move)
        rates.append(len(sample) / (time.process_time() - start))
    return rates[0], rates[1], rates[2]


def main() -> None:
    """Run every measurement and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="images per fast-path run")
    parser.add_argument("--svg-count", type=int, default=60, help="images per SVG-path run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--looks", type=int, default=200, help="boards per look (0: skip)")
    args = parser.parse_args()

    # Other work on the machine lowers the wall-clock rates; the load average says how much.
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start\n")
    print("| size | path | format | workers | images | images/s | x SVG | images/CPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for workers in args.workers:
            rates = {}
            runs = [
                ("svg", "png", render_plain_svg, args.svg_count),
                ("fast", "png", render_board, args.count),
                ("fast", "jpeg", render_board, args.count),
            ]
            for path, fmt, renderer, count in runs:
                with tempfile.TemporaryDirectory() as folder:
                    jobs = make_jobs(size, fmt, count, folder, args.seed)
                    rate, cpu_rate = measure(jobs, workers, renderer)
                rates[path, fmt] = rate
                ratio = rate / rates["svg", "png"]
                print(
                    f"| {size} | {path} | {fmt} | {workers} | {count} | {rate:.1f} | {ratio:.1f}"
                    f" | {cpu_rate:.1f} |",
                    flush=True,
                )
            if workers == 2 and size in TARGETS:
                verdict = "met" if rates["fast", "png"] >= TARGETS[size] else "NOT met"
                print(f"| {size} | target {TARGETS[size]:.0f}/s (PNG, 2 workers) | {verdict} |")
    print("\nDrawing only (1 process, warm caches, no encoding or writing):\n")
    print("| size | fast, all looks | fast, plain looks | SVG, plain looks | ratio |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        fast, plain, svg = draw_only(size, min(args.count, 1000), args.svg_count, args.seed)
        print(f"| {size} | {fast:.0f} | {plain:.0f} | {svg:.1f} | {fast / svg:.0f} |", flush=True)
    if args.looks:
        print("\nOne look at a time (boards/CPU-s, cburnett/brown, 1 process, warm caches):\n")
        print("| look | " + " | ".join(f"{size} px" for size in args.sizes) + " |")
        print("|---|" + "---|" * len(args.sizes))
        tables = [per_look(size, args.looks, args.seed) for size in args.sizes]
        for index, (name, _) in enumerate(tables[0]):
            rates = " | ".join(f"{table[index][1]:.0f}" for table in tables)
            print(f"| {name} | {rates} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
