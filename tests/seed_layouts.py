"""Builders of the seed's on-disk data layouts, for tests (small, made on the fly)."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROWS = [
    # placement, active_color, castling_rights, en_passant, best_continuation
    ("r3k2r/8/8/8/8/8/8/R3K2R", "w", "KQkq", "-", "e1g1"),
    ("4k3/8/8/8/3pP3/8/8/4K3", "b", "", "e3", "d4e3"),
    ("6k1/5ppp/8/8/8/8/5PPP/3R2K1", "white", "-", "-", "d1d8"),
]


def image_bytes(fmt: str = "PNG", colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, fmt)
    return buffer.getvalue()


def write_csv_layout(root, rows=ROWS, splits=("train", "validation", "test")) -> None:
    """The seed's CSV + images layout (paths with Windows backslashes, as it wrote them)."""
    for split in splits:
        (root / split / "images").mkdir(parents=True)
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "image_path",
                    "fen",
                    "active_color",
                    "castling_rights",
                    "en_passant_target_square",
                    "best_continuation",
                ]
            )
            for index, row in enumerate(rows):
                name = f"{split}_{index:06d}.png"
                (root / split / "images" / name).write_bytes(image_bytes())
                writer.writerow([f"{split}\\images\\{name}", *row])


def hf_table(rows=ROWS, image_format: str = "JPEG") -> pa.Table:
    """A table shaped like bingbangboom/chess-puzzles-images-mini (image as {bytes, path})."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = list(zip(*rows, strict=True))
    return pa.table(
        {
            "image": pa.array(
                [{"bytes": image_bytes(image_format), "path": None} for _ in rows],
                type=image_type,
            ),
            "board_state": pa.array(columns[0]),
            "active_color": pa.array(columns[1]),
            "castling_rights": pa.array(columns[2]),
            "en_passant_target_square": pa.array(columns[3]),
            "best_continuation": pa.array(columns[4]),
        }
    )


def write_parquet_layout(root, table=None) -> None:
    """The hub's parquet layout: data/{split}-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        pq.write_table(table or hf_table(), root / "data" / f"{split}-00000-of-00001.parquet")


def write_arrow_layout(root, table=None) -> None:
    """A `datasets.save_to_disk` folder: {split}/data-00000-of-00001.arrow (IPC stream)."""
    table = table or hf_table()
    splits = ["train", "validation", "test"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": splits}))
    for split in splits:
        (root / split).mkdir(parents=True)
        path = str(root / split / "data-00000-of-00001.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=2)
        (root / split / "state.json").write_text("{}")
