"""Where positions come from: synthetic games, and the seed's own data on disk.

Synthetic games are played by a cheap heuristic player (weighted random moves that prefer
development, castling, good captures, promotions and pawn pushes in endgames, and avoid
hanging pieces), so positions look like real play and carry their real side to move,
castling rights, en passant square and move clocks. Each game draws its own temperament
(how eagerly it trades, how long it lasts), which spreads the positions from the opening to
bare-king endings. Stockfish is not needed: this player is fast, deterministic for a seed and
varied enough for reading boards, which is all the positions are used for.

Imports read the two layouts the seed's data exists in: its CSV + image files, and the
Hugging Face `bingbangboom/chess-puzzles-images-mini` dataset (parquet files, or a
`datasets.save_to_disk` folder of Arrow stream files). They yield `RawSample`s; turning a raw
sample into a board (`sample_board`) raises `InputError` naming the file and row, so callers
can stop or skip (images are checked where they are written, in `chessvlm.datasets`).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import chess

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.positions import board_with_metadata, seed_validity_errors

# ---------------------------------------------------------------------------------------------
# Synthetic games

_VALUES = (0, 1, 3, 3, 5, 9, 0)  # indexed by python-chess piece type; kings count 0
_CENTER_FILES = chess.BB_FILE_C | chess.BB_FILE_D | chess.BB_FILE_E | chess.BB_FILE_F
_OPENING_PLIES = 20
_ENDGAME_PIECES = 12


class SyntheticPosition(NamedTuple):
    """A position from a synthetic game: its full FEN and the move that led to it (UCI)."""

    fen: str
    last_move: str | None

    @property
    def board(self) -> chess.Board:
        """The position as a board."""
        return chess.Board(self.fen)

    @property
    def move(self) -> chess.Move | None:
        """The move that led to the position, for last-move highlighting."""
        return chess.Move.from_uci(self.last_move) if self.last_move else None


@dataclass(frozen=True)
class _Temperament:
    """How one synthetic game is played; drawn per game so that games differ in character."""

    appetite: float  # weight of captures: high values trade pieces off quickly
    blunder_rate: float  # share of moves chosen uniformly at random
    max_plies: int
    emit_rate: float  # probability that a position of the game is kept

    @classmethod
    def draw(cls, rng: random.Random) -> _Temperament:
        return cls(
            appetite=math.exp(rng.uniform(math.log(0.5), math.log(12.0))),
            blunder_rate=rng.uniform(0.0, 0.15),
            max_plies=rng.randint(30, 320),
            emit_rate=rng.uniform(0.15, 0.4),
        )


def placement_key(board: chess.Board) -> tuple[int, ...]:
    """A cheap hashable key of a board's piece placement (what an image shows)."""
    return (
        board.occupied_co[chess.WHITE],
        board.pawns,
        board.knights,
        board.bishops,
        board.rooks,
        board.queens,
        board.kings,
    )


def iter_synthetic_positions(
    seed: int | str, exclude: set[tuple[int, ...]] | None = None
) -> Iterator[SyntheticPosition]:
    """Endless stream of distinct positions from synthetic games, deterministic for `seed`.

    Placements already in `exclude` are skipped, and every placement yielded is added to it,
    so streams sharing one set (e.g. the train and test splits) never repeat a board.
    """
    rng = random.Random(f"chessvlm-synthetic/{seed}")
    seen = exclude if exclude is not None else set()
    while True:
        yield from _play_game(rng, _Temperament.draw(rng), seen)


def synthetic_positions(n: int, seed: int | str) -> list[SyntheticPosition]:
    """`n` distinct positions from synthetic games, the same ones for the same `seed`."""
    stream = iter_synthetic_positions(seed)
    return [next(stream) for _ in range(n)]


def _play_game(
    rng: random.Random, temperament: _Temperament, seen: set[tuple[int, ...]]
) -> Iterator[SyntheticPosition]:
    board = chess.Board()
    for _ in range(temperament.max_plies):
        move = _choose_move(board, rng, temperament)
        if move is None:
            return
        board.push(move)
        over = board.is_insufficient_material()
        # En passant chances and bare-king endings are rare in play: always keep them so that
        # datasets show them.
        keep = over or board.has_legal_en_passant() or rng.random() < temperament.emit_rate
        if keep and (key := placement_key(board)) not in seen:
            seen.add(key)
            yield SyntheticPosition(board.fen(), move.uci())
        if over:
            return


def _choose_move(
    board: chess.Board, rng: random.Random, temperament: _Temperament
) -> chess.Move | None:
    """A legal move drawn by the heuristic weights, or None when there is none (game over).

    Draws among pseudo-legal moves and tests only the drawn one for legality, which is much
    cheaper than generating every legal move; an illegal draw is removed and drawn again.
    """
    moves = list(board.generate_pseudo_legal_moves())
    if rng.random() < temperament.blunder_rate:
        weights = [1.0] * len(moves)
    else:
        weights = _move_weights(board, moves, temperament.appetite)
    while moves:
        index = rng.choices(range(len(moves)), weights)[0]
        if board.is_legal(moves[index]):
            return moves[index]
        del moves[index], weights[index]
    return None


def _enemy_attacks(board: chess.Board) -> int:
    """Squares the side not to move attacks (with the board as it stands)."""
    attacked = 0
    for square in chess.scan_forward(board.occupied_co[not board.turn]):
        attacked |= board.attacks_mask(square)
    return attacked


def _piece_types(board: chess.Board) -> list[int]:
    """Piece type on each square (0 when empty): one table per ply instead of a lookup per move."""
    types = [0] * 64
    for piece_type, mask in (
        (chess.PAWN, board.pawns),
        (chess.KNIGHT, board.knights),
        (chess.BISHOP, board.bishops),
        (chess.ROOK, board.rooks),
        (chess.QUEEN, board.queens),
        (chess.KING, board.kings),
    ):
        for square in chess.scan_forward(mask):
            types[square] = piece_type
    return types


def _move_weights(board: chess.Board, moves: list[chess.Move], appetite: float) -> list[float]:
    """Heuristic preference for each pseudo-legal move; only relative sizes matter."""
    attacked = _enemy_attacks(board)
    types = _piece_types(board)
    opening = board.ply() < _OPENING_PLIES
    endgame = chess.popcount(board.occupied) <= _ENDGAME_PIECES
    back_rank = chess.BB_RANK_1 if board.turn == chess.WHITE else chess.BB_RANK_8
    weights = []
    for move in moves:
        moved, captured = types[move.from_square], types[move.to_square]
        if moved == chess.PAWN and move.to_square == board.ep_square:
            captured = chess.PAWN  # en passant: a pawn only reaches that square by capturing
        gain = _VALUES[captured]
        weight = 1.0 + appetite * (1 + gain) if captured else 1.0
        if moved != chess.KING and _VALUES[moved] > gain and attacked & (1 << move.to_square):
            weight *= 0.1  # would lose material
        if move.promotion:
            weight += 40.0 if move.promotion == chess.QUEEN else 1.0
        if moved == chess.KING:
            # Castling is the only king move of two files.
            if abs(move.from_square - move.to_square) == 2:
                weight += 10.0
            elif not endgame:
                weight *= 0.15
        elif opening:
            weight *= _opening_factor(move, moved, back_rank)
        elif endgame and moved == chess.PAWN:
            weight += 2.0
        weights.append(weight)
    return weights


def _opening_factor(move: chess.Move, moved: int, back_rank: int) -> float:
    if moved in (chess.KNIGHT, chess.BISHOP) and chess.BB_SQUARES[move.from_square] & back_rank:
        return 4.0
    if moved == chess.PAWN and chess.BB_SQUARES[move.to_square] & _CENTER_FILES:
        return 2.5
    if moved == chess.QUEEN:
        return 0.4
    return 1.0


# ---------------------------------------------------------------------------------------------
# The seed's data on disk

IMPORT_FORMATS = ("csv", "hf")
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
_METADATA_COLUMNS = ("active_color", "castling_rights", "en_passant_target_square")
_OPTIONAL_COLUMNS = ("best_continuation",)
_COLUMNS = {
    "csv": ("image_path", "fen", *_METADATA_COLUMNS),
    "hf": ("image", "board_state", *_METADATA_COLUMNS),
}
_ACTIVE_COLORS = {"w": "w", "white": "w", "b": "b", "black": "b"}
_BLANK = ("", "-", "none", "nan", "null")


@dataclass(frozen=True)
class RawSample:
    """One row of an imported dataset, before its board and image are checked.

    `where` names the file and row for error messages. The image is either `image` (bytes) or
    `image_file` (a path on disk).
    """

    split: str
    index: int
    where: str
    placement: str
    active_color: str | None
    castling_rights: str | None
    en_passant: str | None
    best_continuation: str | None
    image: bytes | None = None
    image_file: str | None = None
    problem: str | None = None  # a malformed row, reported when the sample is used


def find_splits(fmt: str, source: str | Path, split: str | None = None) -> dict[str, list[Path]]:
    """The files of each split (`train`, `val`, `test`) of an import source.

    `source` is a directory of the layout or one of its files; a file's split is `split` when
    given, else guessed from its name or folder (`validation` is read as `val`).
    """
    if fmt not in IMPORT_FORMATS:
        raise ChessVLMError(f"unknown import format {fmt!r}; choose {' or '.join(IMPORT_FORMATS)}")
    source = Path(source)
    suffixes = (".csv",) if fmt == "csv" else (".parquet", ".arrow")
    if source.is_file():
        files = [source]
    elif source.is_dir():
        pattern = "*" if fmt == "csv" else "**/*"
        files = sorted(p for p in source.glob(pattern) if p.suffix in suffixes and p.is_file())
    else:
        raise InputError(str(source), "no such file or directory")
    if not files:
        kinds = " or ".join(suffixes)
        raise InputError(str(source), f"no {kinds} files found for --format {fmt}")
    splits: dict[str, list[Path]] = {}
    for path in files:
        name = _split_of(path, split if source.is_file() else None)
        splits.setdefault(name, []).append(path)
    return {name: splits[name] for name in ("train", "val", "test") if name in splits}


def _split_of(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in SPLIT_NAMES:
            raise InputError(str(path), f"unknown split {given!r}; use train, val or test")
        return SPLIT_NAMES[given]
    # Hub parquet shards are named `train-00000-of-00001.parquet`; save_to_disk keeps each
    # split in a folder named after it.
    candidates = [path.stem.split("-")[0], *(parent.name for parent in path.parents)]
    for candidate in candidates:
        if candidate.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[candidate.lower()]
    raise InputError(
        str(path), "cannot tell which split this file is; name it train/validation/test or --split"
    )


def count_samples(fmt: str, files: list[Path]) -> int:
    """How many rows the files hold (for progress bars)."""
    if fmt == "csv":
        total = 0
        for path in files:
            with path.open(newline="", encoding="utf-8") as handle:
                total += max(sum(1 for _ in csv.reader(handle)) - 1, 0)
        return total
    return sum(sum(batch.num_rows for batch in _arrow_batches(path)) for path in files)


def iter_samples(
    fmt: str, split: str, files: list[Path], image_root: str | Path | None = None
) -> Iterator[RawSample]:
    """The rows of one split, in file order, indexed from 0 across the split's files.

    CSV image paths (backslashes allowed) are resolved against `image_root` when given, else
    against the CSV's folder, else against the current directory.
    """
    index = 0
    for path in files:
        rows = _csv_rows(path, image_root) if fmt == "csv" else _hf_rows(path)
        for where, row in rows:
            yield RawSample(split=split, index=index, where=where, **row)
            index += 1


def _check_columns(path: Path, fmt: str, columns: list[str], line: int | None) -> None:
    required = _COLUMNS[fmt]
    missing = [c for c in required if c not in columns]
    unknown = [c for c in columns if c not in required and c not in _OPTIONAL_COLUMNS]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        expected = ", ".join((*required, *_OPTIONAL_COLUMNS))
        raise InputError(str(path), f"{'; '.join(problems)} (expected {expected})", line=line)


def _csv_rows(path: Path, image_root: str | Path | None) -> Iterator[tuple[str, dict]]:
    roots = [Path(image_root)] if image_root is not None else [path.parent, Path.cwd()]
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _check_columns(path, "csv", list(reader.fieldnames or []), line=1)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            malformed = None in row or None in row.values()
            yield (
                where,
                {
                    **_metadata_fields(row, row["fen"]),
                    "image_file": str(_resolve_image(row["image_path"] or "", roots)),
                    "problem": f"expected {len(reader.fieldnames)} fields" if malformed else None,
                },
            )


def _resolve_image(text: str, roots: list[Path]) -> Path:
    relative = Path(text.strip().replace("\\", "/"))
    if relative.is_absolute():
        return relative
    for root in roots:
        if (root / relative).exists():
            return root / relative
    return roots[0] / relative  # missing: reported when the image is read


def _hf_rows(path: Path) -> Iterator[tuple[str, dict]]:
    row_number = 0
    for batch in _arrow_batches(path):
        _check_columns(path, "hf", batch.schema.names, line=None)
        for row in batch.to_pylist():
            where = f"{path} row {row_number}"
            row_number += 1
            image = row["image"]
            if isinstance(image, dict):
                data, file = image.get("bytes"), image.get("path")
            else:
                data, file = image, None
            if not data and file:
                file = str(path.parent / file)
            yield (
                where,
                {
                    **_metadata_fields(row, row["board_state"]),
                    "image": data or None,
                    "image_file": None if data else file,
                },
            )


def _arrow_batches(path: Path) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=256)
            return
        with pa.memory_map(str(path)) as stream:
            # `datasets` writes the Arrow IPC stream format; plain Arrow files use the file one.
            try:
                reader = pa.ipc.open_stream(stream)
            except pa.ArrowInvalid:
                stream.seek(0)
                reader = pa.ipc.open_file(stream)
                yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
                return
            yield from reader
    except (pa.ArrowException, OSError) as error:
        raise InputError(str(path), f"cannot read {path.suffix[1:]} data: {error}") from None


def _metadata_fields(row: dict, placement: object) -> dict:
    return {
        "placement": "" if placement is None else str(placement),
        "active_color": row["active_color"],
        "castling_rights": row["castling_rights"],
        "en_passant": row["en_passant_target_square"],
        "best_continuation": row.get("best_continuation"),
    }


def sample_board(sample: RawSample) -> chess.Board:
    """The position of an imported row (see `checked_board`); raises `InputError` naming the row."""
    if sample.problem:
        raise InputError(sample.where, sample.problem)
    return checked_board(
        sample.placement,
        sample.where,
        sample.active_color,
        sample.castling_rights,
        sample.en_passant,
    )


def checked_board(
    fen: str,
    where: str,
    active_color: object = None,
    castling_rights: object = None,
    en_passant: object = None,
) -> chess.Board:
    """A board from a full FEN, or from a placement plus the FEN metadata fields given apart.

    Accepts `w`/`b` or `white`/`black`, and `-`, empty or missing for no castling or en passant.
    Raises `InputError` at `where` for an unreadable FEN or an impossible position (the seed's
    checks: one king a side, at most 8 pawns and 16 pieces, no pawns on ranks 1 and 8).
    """
    fen = fen.strip()
    if not fen:
        raise InputError(where, "empty FEN")
    try:
        board = (
            chess.Board(fen)
            if " " in fen
            else _placement_with_fields(fen, where, active_color, castling_rights, en_passant)
        )
    except ValueError as error:
        raise InputError(where, f"invalid FEN {fen!r}: {error}") from None
    problems = seed_validity_errors(board)
    if problems:
        raise InputError(where, f"impossible position {fen!r}: {'; '.join(problems)}")
    return board


def _placement_with_fields(
    placement: str, where: str, active_color: object, castling_rights: object, en_passant: object
) -> chess.Board:
    color = _ACTIVE_COLORS.get(str(active_color or "").strip().lower())
    if color is None:
        raise InputError(where, f"active_color {active_color!r} is not w/b/white/black")
    castling = _blank_to_dash(castling_rights)
    if castling != "-" and not set(castling) <= set("KQkq"):
        raise InputError(where, f"castling_rights {castling_rights!r} is not made of KQkq or -")
    square = _blank_to_dash(en_passant)
    if square != "-" and (square not in chess.SQUARE_NAMES or square[1] not in "36"):
        raise InputError(where, f"en passant square {en_passant!r} is impossible")
    board = chess.Board(None)
    board.set_board_fen(placement)
    return board_with_metadata(board, color, castling, square)


def _blank_to_dash(value: object) -> str:
    text = "" if value is None else str(value).strip()
    return "-" if text.lower() in _BLANK else text
