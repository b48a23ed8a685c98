"""Tiny JSON datasets and reader checkpoints for the board-reader tests."""

from __future__ import annotations

import json
from pathlib import Path

import chess

from chessvlm.positions import seed_json
from chessvlm.rendering import RenderParams, render_board
from chessvlm.sources import synthetic_positions

# Small boards keep the tests fast; 64 px is the smallest size the CNN accepts (8 px a square).
TEST_IMAGE_SIZE = 64


def write_dataset(root: Path, counts: dict[str, int], *, size: int = 128, seed: int = 0) -> Path:
    """A JSON dataset (records as `chessvlm data synth` writes them), every other board flipped."""
    positions = iter(synthetic_positions(sum(counts.values()), seed))
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        lines = []
        for index in range(count):
            position = next(positions)
            flipped = index % 2 == 1
            params = RenderParams(size=size, flipped=flipped, coordinates=index % 3 == 0)
            board = chess.Board(position.fen)
            image_path = f"images/{split}_{index:04d}.png"
            render_board(board, params).save(root / image_path)
            fields = position.fen.split()
            record = {
                "id": f"{split}_{index:04d}",
                "image_path": image_path,
                "fen": position.fen,
                "json_repr": seed_json(board),
                "active_color": fields[1],
                "castling_rights": fields[2],
                "en_passant_target_square": fields[3],
                "flipped": flipped,
                "style": params.name,
            }
            lines.append(json.dumps(record) + "\n")
        (root / f"{split}.jsonl").write_text("".join(lines))
    return root
