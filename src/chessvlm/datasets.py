"""The JSON dataset (`{split}.jsonl` + images) and the VLM dataset (`{split}.json`).

JSON dataset, in a folder `DIR` (docs/design.md): `images/` and one record a line in
`{train,val,test}.jsonl`; `image_path` is relative to `DIR`. `DIR/dataset.json` records how it
was made, so a rerun with the same settings resumes and one with other settings is refused.
While a split is being written its records go to `DIR/.progress/{split}.jsonl`, one flushed
line per finished image (images are written atomically first), so an interrupted run keeps
every finished image and redoes none; the split's `.jsonl` is written atomically when it is
complete. Samples skipped with `skip_bad` are listed in `DIR/skipped.jsonl` with the reason.

Imported images are copied byte for byte into `DIR/images/` after being decoded once to
check them, so the dataset folder is self-contained and keeps the source's exact pixels.

VLM dataset: the seed's conversation format with the prompt of the target (`PROMPTS`) in the
user turn; training and evaluation both read the prompt from the record.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import chess
from PIL import Image, UnidentifiedImageError

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import (
    JsonlAppender,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    iter_jsonl,
    require_file,
    require_folder,
)
from chessvlm.positions import TARGETS, answer_text, en_passant_square, seed_json
from chessvlm.prompts import IMAGE_TOKEN, PROMPTS
from chessvlm.sources import (
    checked_board,
    count_samples,
    find_splits,
    iter_samples,
    iter_synthetic_positions,
    sample_board,
)

SPLITS = ("train", "val", "test")
IMAGES_DIR = "images"
MANIFEST = "dataset.json"
SKIPPED = "skipped.jsonl"
_PROGRESS_DIR = ".progress"
_USED_SETS = "piece_sets_used"  # manifest key: the sets a finished synthetic dataset drew
_IMAGE_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg"}


# ---------------------------------------------------------------------------------------------
# Records and images


def json_record(
    sample_id: str,
    image_path: str,
    board: chess.Board,
    *,
    flipped: bool,
    style: str,
    **extra: object,
) -> dict:
    """One JSON dataset record; the metadata fields are read from `board`, in FEN notation."""
    return {
        "id": sample_id,
        "image_path": image_path,
        "fen": board.fen(),
        "json_repr": seed_json(board),
        "active_color": "w" if board.turn == chess.WHITE else "b",
        "castling_rights": board.castling_xfen(),
        "en_passant_target_square": en_passant_square(board) or "-",
        "flipped": flipped,
        "style": style,
        **extra,
    }


def check_image_bytes(data: bytes, where: str) -> str:
    """Decode an image fully (catching truncation) and return its file extension.

    Raises `InputError` at `where` for bytes that are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image_format = image.format or ""
    except UnidentifiedImageError:
        raise InputError(where, "not an image file") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise InputError(where, f"corrupt or truncated image ({error})") from None
    return _IMAGE_EXTENSIONS.get(image_format, f".{image_format.lower()}")


def check_image_file(path: str | Path, where: str) -> str:
    """`check_image_bytes` for a file; a missing file is an `InputError` too."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(where, f"cannot read image {path} ({error.strerror})") from None
    try:
        return check_image_bytes(data, where)
    except InputError as error:
        raise InputError(where, f"image {path}: {error.problem}") from None


# ---------------------------------------------------------------------------------------------
# Writing a JSON dataset: shared resume machinery


def _claim_output(out_dir: Path, settings: dict) -> None:
    """Record how `out_dir` is made, or refuse when it was made with other settings."""
    manifest = out_dir / MANIFEST
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(str(manifest), "unreadable; choose another --out") from None
        previous.pop(_USED_SETS, None)  # written when the dataset is complete
        if previous != settings:
            changed = sorted(
                k for k in {*previous, *settings} if previous.get(k) != settings.get(k)
            )
            raise ChessVLMError(
                f"{out_dir} holds a dataset made with other settings ({', '.join(changed)} "
                "differ); rerun with the same settings to resume, or choose another --out"
            )
    else:
        atomic_write_json(manifest, settings)
    # Temporary image files left by an interrupted run; this run is the folder's only writer.
    for stale in (out_dir / IMAGES_DIR).glob(".*.tmp"):
        stale.unlink()


class _SplitProgress:
    """The progress logs of a split being written: its finished records and skipped samples.

    Records are appended in sample order (every producer here is ordered), so the finished
    log becomes `{split}.jsonl` by an atomic rename, whatever the size of the split.
    """

    def __init__(self, out_dir: Path, split: str) -> None:
        self.out_dir, self.split = out_dir, split
        self.records = JsonlAppender(_progress_path(out_dir, split))
        self.skipped = JsonlAppender(_progress_path(out_dir, split, skipped=True))
        self.done = self.records.done_ids | self.skipped.done_ids

    def __enter__(self) -> _SplitProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.records.close()
        self.skipped.close()

    def finish(self) -> tuple[int, int]:
        """Publish `{split}.jsonl`, list the skipped samples in `skipped.jsonl`, drop the logs.

        Returns `(written, skipped)`.
        """
        skipped_log = _progress_path(self.out_dir, self.split, skipped=True)
        skipped = [{"split": self.split, **entry} for _, entry in iter_jsonl(skipped_log)]
        listing = self.out_dir / SKIPPED
        if skipped or listing.exists():
            others = []
            if listing.exists():
                others = [e for _, e in iter_jsonl(listing) if e.get("split") != self.split]
            atomic_write_jsonl(listing, others + skipped)
        os.replace(self.records.path, self.out_dir / f"{self.split}.jsonl")
        _split_done(self.out_dir, self.split)  # removes the remaining log
        return len(self.records.done_ids), len(skipped)


def _progress_path(out_dir: Path, split: str, skipped: bool = False) -> Path:
    return out_dir / _PROGRESS_DIR / (f"{split}.skipped.jsonl" if skipped else f"{split}.jsonl")


def _split_done(out_dir: Path, split: str) -> bool:
    """Whether the split was finished; then removes any progress log a crash left behind."""
    if not (out_dir / f"{split}.jsonl").exists():
        return False
    for skipped in (False, True):
        _progress_path(out_dir, split, skipped).unlink(missing_ok=True)
    folder = out_dir / _PROGRESS_DIR
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return True


def _done_summary(out_dir: Path, split: str) -> tuple[int, int]:
    """`(written, skipped)` of a split finished by an earlier run."""
    with (out_dir / f"{split}.jsonl").open(encoding="utf-8") as handle:
        written = sum(1 for _ in handle)
    skipped = 0
    if (out_dir / SKIPPED).exists():
        skipped = sum(e.get("split") == split for _, e in iter_jsonl(out_dir / SKIPPED))
    return written, skipped


def _id_width(count: int) -> int:
    # Zero-padded ids sort in sample order, which is how a finished split is written.
    return max(6, len(str(max(count - 1, 0))))


def _progress_bar(total: int, done: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=min(done, total), desc=desc, unit="img", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Synthetic datasets


def synth_json_dataset(
    out_dir: str | Path,
    counts: dict[str, int],
    seed: int,
    style: str = "mixed",
    test_style: str | None = None,
    workers: int = 1,
    chunk_size: int = 32,
) -> dict[str, int]:
    """Render positions from synthetic games into a JSON dataset; resumes an interrupted run.

    `counts` gives the number of images per split. Each split draws from its own games, and
    no board appears in two splits. The test split is rendered in `test_style` (default
    `style`) so that held-out looks can be measured. Everything, render parameters included,
    is determined by `seed`. Returns the number of records per split.
    """
    from chessvlm import rendering

    out_dir = Path(out_dir)
    styles = {split: style for split in SPLITS} | {"test": test_style or style}
    for name in set(styles.values()):
        if name not in rendering.STYLES:
            known = ", ".join(rendering.STYLES)
            raise ChessVLMError(f"unknown style {name!r}; choose one of {known}")
    counts = {split: int(counts.get(split, 0)) for split in SPLITS}
    # The sets the styles can draw now (art present); other art would change the draws.
    piece_sets = sorted(
        {s for name in set(styles.values()) for s in rendering.style_piece_sets(name)}
    )
    settings = {"kind": "synthetic", "seed": seed, "counts": counts, "styles": styles}
    _claim_output(out_dir, settings | {"piece_sets": piece_sets})
    seen: set[tuple[int, ...]] = set()
    written = {}
    for split in SPLITS:
        stream = islice(iter_synthetic_positions(f"{seed}/{split}", seen), counts[split])
        if _split_done(out_dir, split):
            # The later splits exclude this split's boards, so its positions are still drawn.
            written[split] = sum(1 for _ in stream)
            continue
        written[split] = _write_synth_split(
            out_dir, split, seed, styles[split], counts[split], stream, workers, chunk_size
        )
    _record_piece_sets_used(out_dir)
    return written


def _record_piece_sets_used(out_dir: Path) -> None:
    """Add the piece sets the finished splits actually drew to the manifest."""
    used = set()
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        if path.is_file():
            used.update(r["style"].split("/", 1)[0] for _, r in iter_jsonl(path) if r.get("style"))
    manifest = out_dir / MANIFEST
    settings = json.loads(manifest.read_text(encoding="utf-8"))
    if settings.get(_USED_SETS) != sorted(used):
        atomic_write_json(manifest, settings | {_USED_SETS: sorted(used)})


def _write_synth_split(
    out_dir: Path,
    split: str,
    seed: int,
    style: str,
    count: int,
    stream: Iterator,
    workers: int,
    chunk_size: int,
) -> int:
    from chessvlm import rendering

    width = _id_width(count)
    with _SplitProgress(out_dir, split) as progress:

        def jobs() -> Iterator[rendering.RenderJob]:
            for index, position in enumerate(stream):
                sample_id = f"{split}_{index:0{width}d}"
                if sample_id in progress.done:
                    continue
                # Seeded per sample, so a resumed run draws the same look for each image.
                params = rendering.sample_render_params(style, random.Random(f"{seed}/{sample_id}"))
                path = out_dir / IMAGES_DIR / f"{sample_id}{rendering.image_extension(params)}"
                yield rendering.RenderJob(position.fen, params, str(path), position.last_move)

        with _progress_bar(count, len(progress.done), f"synth {split}") as bar:
            for job in rendering.render_many(jobs(), workers, chunk_size):
                path = Path(job.path)
                record = json_record(
                    path.stem,
                    f"{IMAGES_DIR}/{path.name}",
                    chess.Board(job.fen),
                    flipped=job.params.flipped,
                    style=job.params.name,
                    board_box=list(rendering.board_box(job.params)),
                    coordinates=job.params.coordinate_mode,
                )
                progress.records.write(record)
                bar.update()
    return progress.finish()[0]


# ---------------------------------------------------------------------------------------------
# Imported datasets


def import_json_dataset(
    out_dir: str | Path,
    fmt: str,
    source: str | Path,
    split: str | None = None,
    image_root: str | Path | None = None,
    max_samples: int | None = None,
    skip_bad: bool = False,
) -> dict[str, tuple[int, int]]:
    """Import the seed's data (`fmt` "csv" or "hf") into a JSON dataset; resumes when rerun.

    A bad row (unreadable or impossible position, missing or corrupt image) raises
    `InputError` naming it, after every finished row has been saved; with `skip_bad` it is
    listed in `skipped.jsonl` instead. `max_samples` caps each split. Returns
    `(written, skipped)` per split, splits finished by an earlier run included.
    """
    out_dir = Path(out_dir)
    splits = find_splits(fmt, source, split)
    _claim_output(
        out_dir,
        {
            "kind": "import",
            "format": fmt,
            "source": str(Path(source).resolve()),
            "split": split,
            "image_root": None if image_root is None else str(Path(image_root).resolve()),
            "max_samples": max_samples,
        },
    )
    results = {}
    for name, files in splits.items():
        if _split_done(out_dir, name):
            results[name] = _done_summary(out_dir, name)
            continue
        total = count_samples(fmt, files)
        samples = iter_samples(fmt, name, files, image_root)
        if max_samples is not None:
            total = min(total, max_samples)
            samples = islice(samples, max_samples)
        results[name] = _import_split(out_dir, fmt, name, samples, total, skip_bad)
    return results


def _import_split(
    out_dir: Path, fmt: str, split: str, samples: Iterator, total: int, skip_bad: bool
) -> tuple[int, int]:
    width = _id_width(total)
    with (
        _SplitProgress(out_dir, split) as progress,
        _progress_bar(total, len(progress.done), f"import {split}") as bar,
    ):
        for sample in samples:
            sample_id = f"{split}_{sample.index:0{width}d}"
            if sample_id in progress.done:
                continue
            try:
                progress.records.write(_import_sample(out_dir, fmt, sample_id, sample))
            except InputError as error:
                if not skip_bad:
                    raise
                entry = {"id": sample_id, "where": sample.where, "skipped": error.problem}
                progress.skipped.write(entry)
            bar.update()
    return progress.finish()


def _import_sample(out_dir: Path, fmt: str, sample_id: str, sample) -> dict:
    board = sample_board(sample)
    if sample.image is not None:
        data = sample.image
    elif sample.image_file:
        try:
            data = Path(sample.image_file).read_bytes()
        except OSError as error:
            problem = f"cannot read image {sample.image_file} ({error.strerror})"
            raise InputError(sample.where, problem) from None
    else:
        raise InputError(sample.where, "no image")
    extension = check_image_bytes(data, sample.where)
    name = f"{sample_id}{extension}"
    atomic_write_bytes(out_dir / IMAGES_DIR / name, data)
    extra = {"source": sample.where}
    if sample.best_continuation:
        extra["best_continuation"] = sample.best_continuation
    return json_record(
        sample_id, f"{IMAGES_DIR}/{name}", board, flipped=False, style=f"import-{fmt}", **extra
    )


# ---------------------------------------------------------------------------------------------
# Reading a JSON dataset


def parse_json_line(path: str | Path, line: int, text: str) -> tuple[dict, chess.Board]:
    """One JSON dataset line as `(record, board)`; raises `InputError` naming file and line.

    `fen` may be a full FEN or, as in the seed's own JSON datasets, the placement field with
    the metadata in `active_color`, `castling_rights` and `en_passant_target_square`.
    """
    where = f"{path}:{line}"
    if not text.strip():
        raise InputError(where, "empty line")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(where, f"not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise InputError(where, "expected a JSON object")
    missing = [key for key in ("image_path", "fen") if not isinstance(record.get(key), str)]
    if missing:
        raise InputError(where, f"missing or non-text key(s): {', '.join(missing)}")
    board = checked_board(
        record["fen"],
        where,
        record.get("active_color"),
        record.get("castling_rights"),
        record.get("en_passant_target_square"),
    )
    return record, board


def iter_json_dataset(path: str | Path) -> Iterator[tuple[int, str]]:
    """`(line_number, text)` for each line of a JSON dataset split (empty lines included)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    with path.open(encoding="utf-8") as handle:
        try:
            yield from enumerate(handle, start=1)
        except UnicodeDecodeError:
            raise InputError(str(path), "not a UTF-8 text file") from None


def read_json_dataset(path: str | Path) -> list[tuple[dict, chess.Board]]:
    """Every record of a JSON dataset split with its board (strict: a bad line raises)."""
    return [parse_json_line(path, number, text) for number, text in iter_json_dataset(path)]


def resolve_image(data_dir: Path, image_path: str) -> Path:
    """Where a JSON dataset record's image is: `image_path` is relative to the dataset folder.

    Backslashes are read as separators. The seed's JSON datasets stored paths relative to the
    working directory instead; those are found there when they are not under `data_dir`.
    """
    relative = Path(image_path.replace("\\", "/"))
    if relative.is_absolute():
        return relative
    inside = data_dir / relative
    if inside.exists() or not relative.exists():
        return inside
    return relative.resolve()


# ---------------------------------------------------------------------------------------------
# The VLM dataset


def vlm_record(
    record: dict,
    board: chess.Board,
    image: str,
    target: str,
    sample_id: str,
    prompt: str | None = None,
) -> dict:
    """One VLM dataset record (the seed's conversation format plus what evaluation needs).

    The user turn asks `prompt`, by default the target's (`PROMPTS`). When the JSON record
    says where the board's 8x8 squares are (`board_box`: left, top, right, bottom in the
    image's pixels), the VLM record keeps it: training crops each image to it. Without one,
    the board fills the image.
    """
    vlm = {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "user", "value": f"{IMAGE_TOKEN}\n{prompt or PROMPTS[target]}"},
            {"from": "assistant", "value": answer_text(board, target)},
        ],
        "fen": board.fen(),
        "flipped": bool(record.get("flipped", False)),
        "style": record.get("style"),
        "target": target,
    }
    if record.get("board_box") is not None:
        vlm["board_box"] = record["board_box"]
    return vlm


def create_vlm_dataset(
    data_dir: str | Path,
    output_dir: str | Path,
    base_dir: str | Path | None = None,
    max_samples: int | None = None,
    target: str = "compact",
    skip_bad: bool = False,
    check_images: bool = True,
    prompt: str | None = None,
) -> dict[str, tuple[int, int]]:
    """Convert a JSON dataset's `{split}.jsonl` files into the VLM dataset's `{split}.json`.

    Image paths become relative to `base_dir` (default `data_dir`), the folder training and
    evaluation are given as `--image_base_dir`. Each image is decoded once to catch missing,
    corrupt or truncated files (`check_images=False` only checks that it exists). A bad line
    raises `InputError` naming the file and line; with `skip_bad` it is listed in
    `output_dir/skipped.jsonl` instead. `max_samples` caps each split. `prompt` replaces the
    target's prompt (`PROMPTS`), e.g. `SHORT_PROMPT` for a model trained from scratch.
    Returns `(written, skipped)` per split.
    """
    if target not in TARGETS:
        raise ChessVLMError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    base = Path(base_dir if base_dir is not None else data_dir).resolve()
    inputs = {split: data_dir / f"{split}.jsonl" for split in SPLITS}
    inputs = {split: path for split, path in inputs.items() if path.is_file()}
    if not inputs:
        raise InputError(str(data_dir), "no train.jsonl, val.jsonl or test.jsonl found")
    results, skipped = {}, []
    for split, path in inputs.items():
        records, bad = _vlm_split(
            path, data_dir, base, max_samples, (target, prompt), check_images, skip_bad
        )
        atomic_write_json(output_dir / f"{split}.json", records)
        skipped += [{"split": split, **entry} for entry in bad]
        results[split] = (len(records), len(bad))
    if skip_bad:
        atomic_write_jsonl(output_dir / SKIPPED, skipped)
    return results


def _vlm_split(
    path: Path,
    data_dir: Path,
    base: Path,
    max_samples: int | None,
    question: tuple[str, str | None],
    check_images: bool,
    skip_bad: bool,
) -> tuple[list[dict], list[dict]]:
    from tqdm import tqdm

    records: list[dict] = []
    skipped: list[dict] = []
    ids: set[str] = set()
    for number, text in tqdm(iter_json_dataset(path), desc=path.stem, unit="line"):
        if max_samples is not None and len(records) >= max_samples:
            break
        try:
            record = _vlm_line(path, number, text, data_dir, base, question, check_images)
            if record["id"] in ids:
                raise InputError(f"{path}:{number}", f"duplicate id {record['id']!r}")
        except InputError as error:
            if not skip_bad:
                raise
            skipped.append({"where": f"{path}:{number}", "skipped": error.problem})
        else:
            records.append(record)
            ids.add(record["id"])
    return records, skipped


def _vlm_line(
    path: Path,
    number: int,
    text: str,
    data_dir: Path,
    base: Path,
    question: tuple[str, str | None],
    check_images: bool,
) -> dict:
    """One VLM record from a JSON dataset line; `question` is the target and prompt."""
    record, board = parse_json_line(path, number, text)
    image = resolve_image(data_dir, record["image_path"]).resolve()
    where = f"{path}:{number}"
    if check_images:
        check_image_file(image, where)
    elif not image.is_file():
        raise InputError(where, f"image {image} not found")
    sample_id = str(record.get("id") or image.stem)
    relative = Path(os.path.relpath(image, base)).as_posix()
    target, prompt = question
    vlm = vlm_record(record, board, relative, target, sample_id, prompt)
    problem = _vlm_record_problem(vlm, set())
    if problem is None and "board_box" in vlm and check_images:
        with Image.open(image) as opened:
            width, height = opened.size
        right, bottom = vlm["board_box"][2:]
        # Half a pixel of slack: a box may be rounded outwards.
        if right > width + 0.5 or bottom > height + 0.5:
            problem = f"'board_box' {vlm['board_box']} reaches outside the {width}x{height} image"
    if problem is not None:
        raise InputError(where, problem)
    return vlm


def read_vlm_dataset(path: str | Path) -> list[dict]:
    """Read and validate a VLM dataset file (`{split}.json`).

    Raises `InputError` naming the file, the line where the bad record starts and the record
    (index and id) that is malformed: not an object, no id or image, conversations not a user
    turn holding `<image>` followed by an assistant turn, a FEN that cannot be read, an
    unknown target, a repeated id, a `board_box` that is not [left, top, right, bottom] pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(str(path), f"not valid JSON ({error.msg})", line=error.lineno) from None
    except UnicodeDecodeError:
        raise InputError(str(path), "not a UTF-8 text file") from None
    if not isinstance(data, list):
        raise InputError(str(path), "expected a JSON list of records")

    def line_of(wanted: int) -> int:
        # Walk the list's items to where record `wanted` starts (only once a record is bad).
        decoder, offset = json.JSONDecoder(), text.index("[") + 1
        for _ in range(wanted + 1):
            while text[offset] in " \t\r\n,":
                offset += 1
            start = offset
            _, offset = decoder.raw_decode(text, offset)
        return text.count("\n", 0, start) + 1

    seen: set[str] = set()
    for index, record in enumerate(data):
        problem = _vlm_record_problem(record, seen)
        if problem:
            label = record.get("id") if isinstance(record, dict) else None
            where = f"{path}:{line_of(index)} record {index}"
            where += f" (id {label!r})" if label else ""
            raise InputError(where, problem)
        seen.add(record["id"])
    return data


def require_training_data(data_dir: str | Path, image_base_dir: str | Path | None) -> None:
    """Refuse, before any model loads, a VLM dataset folder without `train.json` or a missing
    image folder (a `ConfigError` naming `data_dir` or `image_base_dir`)."""
    folder = require_folder("data_dir", data_dir)
    require_file("data_dir", folder / "train.json", "`chessvlm create-vlm-dataset` makes it")
    if image_base_dir is not None:
        require_folder("image_base_dir", image_base_dir)


def require_test_data(test_data: str | Path, image_base_dir: str | Path) -> None:
    """Refuse, before any model loads, a missing VLM test set or image folder."""
    require_file("test_data", test_data, "a VLM dataset's test.json")
    require_folder("image_base_dir", image_base_dir)


def _vlm_record_problem(record: object, seen: set[str]) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    for key in ("id", "image"):
        problem = _text_field_problem(record, key)
        if problem:
            return problem
    if record["id"] in seen:
        return "duplicate id"
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "'conversations' must be a list of a user turn and an assistant turn"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        return "each conversation turn needs a text 'value'"
    if turns[0].get("from") != "user" or IMAGE_TOKEN not in turns[0]["value"]:
        return f"the first turn must be from 'user' and hold {IMAGE_TOKEN}"
    if turns[-1].get("from") != "assistant":
        return "the last turn must be from 'assistant'"
    if "target" in record and record["target"] not in TARGETS:
        return f"unknown target {record['target']!r}"
    if "fen" in record:
        try:
            checked_board(str(record["fen"]), "fen")
        except InputError as error:
            return error.problem
    if "board_box" in record:
        return board_box_problem(record["board_box"])
    return None


def _text_field_problem(record: dict, key: str) -> str | None:
    """What is wrong with a required text field of a record, naming a value that is there."""
    if key not in record:
        return f"missing {key!r}"
    value = record[key]
    if not isinstance(value, str):
        return f"{key!r} must be a string, got {json.dumps(value)}"
    return f"{key!r} is empty" if not value else None


def board_box_problem(box: object) -> str | None:
    """What is wrong with a record's `board_box` (where the 8x8 squares are, in the image's
    pixels: left, top, right, bottom), or None."""
    numbers = isinstance(box, list) and len(box) == 4
    numbers = numbers and all(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        for value in box
    )
    if not numbers or not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
        return (
            "'board_box' must be [left, top, right, bottom] in the image's pixels, with "
            f"0 <= left < right and 0 <= top < bottom; got {box!r}"
        )
    return None


def user_prompt(record: dict) -> str:
    """The prompt of a VLM record: its user turn without the image placeholder."""
    return record["conversations"][0]["value"].removeprefix(f"{IMAGE_TOKEN}\n")


def assistant_answer(record: dict) -> str:
    """The answer a VLM record teaches: its last (assistant) turn."""
    return record["conversations"][-1]["value"]
