"""The SPEC metrics over test labels and a predictions file from any system.

Inputs
------
Labels are records of the VLM dataset (`{split}.json`: `id`, `image`, `conversations`, `fen`,
`flipped`, `style`, `target`) or of the JSON dataset (`{split}.jsonl`: `id`, `image_path`,
`fen`, ...). The truth is the label's `fen`: a full FEN, or a placement whose side to move,
castling rights and en passant square are in `active_color`, `castling_rights` and
`en_passant_target_square` (the seed's own JSON datasets).

Predictions are JSONL records of one of three kinds, matched to labels by `id`:

- `{"id", "answer", "answer_tokens"?, "seconds"?, "truncated"?}`: a model's raw answer, read
  with `positions.parse_answer(answer, target)`;
- `{"id", "fen"}`: a board from any other system, a placement-only or full FEN (used only when
  the record has no `answer`);
- `{"id", "error"}` (answer missing or null): the system could not answer this sample (for
  example its image is missing); scored as an unparseable answer and counted under that code.

Every label needs a prediction and every prediction a label; otherwise a `ChessVLMError` names
the missing and extra ids. With `allow_missing=True` (`chessvlm metrics --partial`) a missing
prediction is scored as an unparseable answer with the error code `missing_prediction`.

Definitions (rates are fractions in [0, 1]; "all samples" means every label)
-------------------------------------------------------------------------
An answer is *parsed* when it yields a board: a well-formed answer of the target's shape whose
squares and pieces all make sense (`ParsedAnswer.board`), or a FEN that python-chess reads. An
unparsed answer counts as wrong on all 64 squares and on every per-sample test below.

- `n_samples`: number of labels. `n_parsed`: answers that were parsed.
- `valid_json_rate`: answers that hold a JSON object of the target's shape (`{"board": [...]}`
  for compact, `{"pieces": [...], "metadata": {...}}` for seed), over all samples. For a `fen`
  prediction it is the rate of FENs that python-chess reads.
- `valid_position_rate`: parsed answers whose placement, given the label's side to move,
  castling rights and en passant square, is legal for python-chess (`Board.is_valid()` after
  cleaning castling rights), over all samples.
- `exact_json_match`: parsed answers whose JSON object equals the target answer
  (`positions.answer_text(true_board, target)`) after canonical ordering (seed: pieces sorted
  by square, castling letters sorted; key order never matters), over all samples. Answers with
  extra keys, wrong materials or other restated values do not match. For a `fen` prediction
  (no JSON) it equals `fen_accuracy`.
- `fen_accuracy`: predicted FEN equals the true FEN on the fields the target carries: the
  placement for compact; placement, side to move, castling rights and en passant square for
  seed. A placement-only FEN states no metadata, so under the seed target it never matches.
- `per_square_accuracy`: correct squares / (64 x all samples); empty is one of the 13 classes.
- `per_square_accuracy_parsed_only`: correct squares / (64 x parsed answers), the seed's variant,
  comparable with its 43.55% (null when nothing parsed).
- `exact_board_match`: answers with all 64 squares right, over all samples.
- `all_empty_baseline`: per-square accuracy of answering "empty board" for every sample, i.e.
  empty squares / (64 x all samples) of this test set.
- `occupied_square_accuracy`: squares with a piece in the truth that were read right, over all
  such squares of all samples.
- `mean_wrong_squares`: mean number of wrong squares per board, over all samples (unparsed: 64).
- `boards_with_at_most_one_error`: answers with 0 or 1 wrong squares, over all samples.
- `square_accuracy`: the per-square accuracy of each of the 64 squares (python-chess order,
  a1 first), over all samples.
- `confusion_matrix`: `classes` (the 13 `SQUARE_CLASSES`, empty first), `counts` 13x13 with
  rows = true class and columns = predicted class, over the squares of parsed answers only
  (an unparsed answer predicts no class); `unparsed_by_true_class` counts, per true class, the
  squares of unparsed answers, so each row sum plus that count is the class's support.
- `per_class`: for each of the 13 classes, `support` (true squares of the class, all samples),
  `precision` (right / predicted as the class, parsed answers; null when never predicted) and
  `recall` (right / support, all samples, so squares of unparsed answers are misses; null
  when the class never occurs).
- `answer_tokens`: `mean`, `median`, `max` and `n` of the predictions' `answer_tokens`, over the
  predictions that carry it (null when none do), and `truncated`: how many answers were cut
  at the generation limit (predictions marked `"truncated": true`).
- `boards_per_second`: answered samples / `elapsed_seconds` when given, else answered samples /
  the sum of the predictions' `seconds` (each sample's share of its batch's wall time) when
  every answered prediction carries it, else null.
- `metadata_accuracy` (seed target only, null for compact): `side_to_move`, `castling_rights`,
  `en_passant`: answers stating the label's value, over all samples. The label's castling
  rights are those the position really has (python-chess's cleaned rights); its en passant
  square is set only when an en passant capture is legal, as in the seed schema. An image
  cannot show castling rights or an en passant square at all (they depend on earlier moves),
  and shows the side to move only through hints such as a highlighted last move; so these
  figures measure guessing from the placement. `constant_baseline` gives the same three rates
  for the seed's constant answer (white to move, no castling, no en passant).
- `error_counts`: how often each `AnswerError` code (and `missing_prediction` or a record's
  `error`) occurred, over all samples.
- `by_style`, `by_orientation` (`white_bottom` / `black_bottom`): the main figures above for
  each image style and board orientation, when the labels record `style` / `flipped`. Styles
  of rendered boards are named `piece-set/theme/size/options`; a test set holds too few boards
  of each whole combination, so they are grouped by their first part, the piece set.
- `by_design`: the same grouped by piece design (`chessvlm.pieces.PieceSet.design`: several
  sets may draw one design), with `held_out` telling the designs the leave-designs-out styles
  keep out of training (`chessvlm.rendering.held_out_designs`).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import chess

from chessvlm.datasets import read_json_dataset, read_vlm_dataset
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import iter_jsonl
from chessvlm.positions import (
    SQUARE_CLASSES,
    TARGETS,
    AnswerError,
    board_from_fen,
    castling_letters,
    compact_rows,
    en_passant_square,
    is_legal_position,
    parse_answer,
    seed_json,
    square_symbols,
)
from chessvlm.sources import checked_board

MISSING_PREDICTION = "missing_prediction"
MAIN_FIGURES = (
    "n_samples",
    "valid_json_rate",
    "valid_position_rate",
    "exact_json_match",
    "fen_accuracy",
    "per_square_accuracy",
    "per_square_accuracy_parsed_only",
    "exact_board_match",
    "all_empty_baseline",
    "occupied_square_accuracy",
    "mean_wrong_squares",
)
METADATA_FIELDS = ("side_to_move", "castling_rights", "en_passant")
_CLASS_INDEX = {symbol: index for index, symbol in enumerate(SQUARE_CLASSES)}
_RAW_CASTLING = (("K", chess.BB_H1), ("Q", chess.BB_A1), ("k", chess.BB_H8), ("q", chess.BB_A8))


@dataclass(frozen=True)
class SampleScore:
    """How one prediction compares with its label (symbols in python-chess order, a1 first)."""

    id: str
    label: dict
    prediction: dict | None
    true_board: chess.Board
    pred_board: chess.Board | None
    true_symbols: list[str]
    pred_symbols: list[str] | None
    wrong_squares: list[int]
    valid_json: bool
    valid_position: bool
    exact_json: bool
    fen_match: bool
    error_codes: tuple[str, ...]
    metadata_right: dict[str, bool] | None

    @property
    def parsed(self) -> bool:
        """Whether the answer yielded a board."""
        return self.pred_board is not None


def read_labels(path: str | Path) -> list[dict]:
    """Label records from a VLM dataset (`.json` list) or a JSON dataset (`.jsonl`) file."""
    if Path(path).suffix == ".jsonl":
        return [record for record, _ in read_json_dataset(path)]
    return read_vlm_dataset(path)


def read_predictions(path: str | Path) -> list[dict]:
    """Prediction records from a JSONL file, each checked to have an id and something to score."""
    records = []
    for line, record in iter_jsonl(path):
        problem = _prediction_problem(record)
        if problem:
            raise InputError(str(path), problem, line=line)
        records.append(record)
    return records


def _prediction_problem(record: dict) -> str | None:
    if "id" not in record:
        return "prediction has no 'id'"
    if not any(record.get(key) is not None for key in ("answer", "fen", "error")):
        return f"prediction {record['id']} has no 'answer', 'fen' or 'error'"
    return None


def infer_target(labels: Iterable[dict]) -> str:
    """The target recorded in VLM labels (`compact` when the labels record none)."""
    targets = {label["target"] for label in labels if "target" in label}
    if len(targets) > 1:
        raise ChessVLMError(f"labels mix targets {sorted(targets)}; pass the target to score")
    return targets.pop() if targets else "compact"


def score_samples(
    labels: Sequence[dict],
    predictions: Sequence[dict],
    target: str,
    *,
    allow_missing: bool = False,
) -> list[SampleScore]:
    """Score each label against its prediction, in label order."""
    if target not in TARGETS:
        raise ChessVLMError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if not labels:
        raise ChessVLMError("no labels to score")
    by_id = _match_ids(labels, predictions, allow_missing)
    return [
        _score_one(index, label, by_id.get(str(label["id"])), target)
        for index, label in enumerate(labels)
    ]


def compute_metrics(
    labels: Sequence[dict],
    predictions: Sequence[dict],
    target: str,
    *,
    elapsed_seconds: float | None = None,
    allow_missing: bool = False,
) -> dict:
    """All SPEC metrics (see the module docstring) as a JSON-serialisable dict."""
    scores = score_samples(labels, predictions, target, allow_missing=allow_missing)
    confusion = _confusion_matrix(scores)
    metrics: dict = {"target": target, "n_parsed": sum(s.parsed for s in scores)}
    metrics.update(main_figures(scores))
    metrics.update(
        boards_with_at_most_one_error=_rate(len(s.wrong_squares) <= 1 for s in scores),
        square_accuracy=_square_accuracy(scores),
        per_class=_per_class(confusion),
        confusion_matrix=confusion,
        answer_tokens=_answer_tokens(scores),
        boards_per_second=_boards_per_second(scores, elapsed_seconds),
        metadata_accuracy=_metadata_accuracy(scores) if target == "seed" else None,
        error_counts=dict(sorted(Counter(c for s in scores for c in s.error_codes).items())),
        by_style=_breakdown(scores, _style_group),
        by_design=_design_breakdown(scores),
        by_orientation=_breakdown(scores, _orientation),
    )
    return metrics


def main_figures(scores: Sequence[SampleScore]) -> dict:
    """The headline figures (MAIN_FIGURES) over a set of scored samples."""
    n = len(scores)
    correct = sum(64 - len(s.wrong_squares) for s in scores)
    parsed = [s for s in scores if s.parsed]
    occupied = sum(64 - s.true_symbols.count(".") for s in scores)
    occupied_right = sum(
        t != "." and t == p
        for s in parsed
        for t, p in zip(s.true_symbols, s.pred_symbols, strict=True)
    )
    parsed_correct = sum(64 - len(s.wrong_squares) for s in parsed)
    return {
        "n_samples": n,
        "valid_json_rate": _rate(s.valid_json for s in scores),
        "valid_position_rate": _rate(s.valid_position for s in scores),
        "exact_json_match": _rate(s.exact_json for s in scores),
        "fen_accuracy": _rate(s.fen_match for s in scores),
        "per_square_accuracy": correct / (64 * n),
        "per_square_accuracy_parsed_only": parsed_correct / (64 * len(parsed)) if parsed else None,
        "exact_board_match": _rate(not s.wrong_squares for s in scores),
        "all_empty_baseline": sum(s.true_symbols.count(".") for s in scores) / (64 * n),
        "occupied_square_accuracy": occupied_right / occupied if occupied else None,
        "mean_wrong_squares": sum(len(s.wrong_squares) for s in scores) / n,
    }


def _match_ids(
    labels: Sequence[dict], predictions: Sequence[dict], allow_missing: bool
) -> dict[str, dict]:
    for index, label in enumerate(labels):
        if "id" not in label or "fen" not in label:
            raise InputError("labels", f"sample {index} has no 'id' or no 'fen'")
    for index, record in enumerate(predictions):
        problem = _prediction_problem(record)
        if problem:
            raise InputError("predictions", f"record {index}: {problem}")
    label_ids = [str(label["id"]) for label in labels]
    _reject_duplicates(label_ids, "labels")
    prediction_ids = [str(record["id"]) for record in predictions]
    _reject_duplicates(prediction_ids, "predictions")
    predicted = set(prediction_ids)
    extra = sorted(predicted - set(label_ids))
    missing = [i for i in label_ids if i not in predicted]
    problems = []
    if missing and not allow_missing:
        problems.append(f"{len(missing)} labels have no prediction ({_some(missing)})")
    if extra:
        problems.append(f"{len(extra)} predictions match no label ({_some(extra)})")
    if problems:
        hint = " (`chessvlm metrics --partial` scores them as unparseable answers)"
        raise ChessVLMError("; ".join(problems) + (hint if missing and not allow_missing else ""))
    return dict(zip(prediction_ids, predictions, strict=True))


def _reject_duplicates(ids: list[str], what: str) -> None:
    duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ChessVLMError(f"{what} repeat {len(duplicates)} ids ({_some(duplicates)})")


def _some(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... {len(ids) - limit} more" if len(ids) > limit else "")


@dataclass(frozen=True)
class _Reading:
    """What a prediction record says, before comparing it with the label."""

    board: chess.Board | None
    valid_json: bool
    error_codes: tuple[str, ...]
    states_metadata: bool
    # None for a FEN (no JSON to compare): its exact match is its FEN match.
    exact_json: bool | None = None


def _score_one(index: int, label: dict, prediction: dict | None, target: str) -> SampleScore:
    # JSON dataset labels may hold a placement-only FEN with the metadata in separate fields.
    true_board = checked_board(
        str(label["fen"]),
        f"labels sample {index} (id {label['id']})",
        label.get("active_color"),
        label.get("castling_rights"),
        label.get("en_passant_target_square"),
    )
    reading = _read_prediction(prediction, true_board, target)
    pred_board = reading.board
    metadata_right = None
    if target == "seed":
        metadata_right = _metadata_right(
            true_board, pred_board if reading.states_metadata else None
        )
    true_symbols = square_symbols(true_board)
    pred_symbols = square_symbols(pred_board) if pred_board is not None else None
    wrong = list(chess.SQUARES)
    if pred_symbols is not None:
        pairs = zip(true_symbols, pred_symbols, strict=True)
        wrong = [square for square, (t, p) in enumerate(pairs) if t != p]
    fen_match = (
        pred_board is not None
        and not wrong
        and (metadata_right is None or all(metadata_right.values()))
    )
    return SampleScore(
        id=str(label["id"]),
        label=label,
        prediction=prediction,
        true_board=true_board,
        pred_board=pred_board,
        true_symbols=true_symbols,
        pred_symbols=pred_symbols,
        wrong_squares=wrong,
        valid_json=reading.valid_json,
        valid_position=_valid_position(true_board, pred_board),
        exact_json=fen_match if reading.exact_json is None else reading.exact_json,
        fen_match=fen_match,
        error_codes=reading.error_codes,
        metadata_right=metadata_right,
    )


def _valid_position(true_board: chess.Board, pred_board: chess.Board | None) -> bool:
    """Whether the predicted placement with the label's metadata is a legal position."""
    if pred_board is None:
        return False
    candidate = true_board.copy(stack=False)
    candidate.set_piece_map(pred_board.piece_map())
    return is_legal_position(candidate)


def _read_prediction(prediction: dict | None, true_board: chess.Board, target: str) -> _Reading:
    if prediction is None:
        return _Reading(None, False, (MISSING_PREDICTION,), False, exact_json=False)
    if prediction.get("answer") is not None:
        parsed = parse_answer(str(prediction["answer"]), target)
        exact = (
            parsed.board is not None
            and parsed.board.board_fen() == true_board.board_fen()
            and _canonical(parsed.data) == _canonical(_target_object(true_board, target))
        )
        codes = tuple(parsed.error_codes)
        return _Reading(parsed.board, parsed.valid_json, codes, target == "seed", exact)
    if prediction.get("fen") is not None:
        fen = str(prediction["fen"])
        try:
            board = board_from_fen(fen)
        except AnswerError as error:
            return _Reading(None, False, (error.code,), False)
        # A placement-only FEN states no side to move, castling or en passant.
        return _Reading(board, True, (), states_metadata=len(fen.split()) > 1)
    return _Reading(None, False, (str(prediction["error"]),), False, exact_json=False)


def _target_object(board: chess.Board, target: str) -> dict:
    """The JSON object that `answer_text(board, target)` serialises."""
    return seed_json(board) if target == "seed" else {"board": compact_rows(board)}


def _canonical(data: object) -> object:
    """The seed answer with pieces in square order and castling letters sorted."""
    if not isinstance(data, dict) or "pieces" not in data:
        return data
    pieces = sorted(data["pieces"], key=lambda entry: chess.SQUARE_NAMES.index(entry["square"]))
    metadata = dict(data["metadata"])
    rights = metadata.get("castling_rights")
    if isinstance(rights, dict):
        metadata["castling_rights"] = {
            color: sorted(letters) if isinstance(letters, list) else letters
            for color, letters in rights.items()
        }
    return {**data, "pieces": pieces, "metadata": metadata}


def _metadata_right(true_board: chess.Board, stated: chess.Board | None) -> dict[str, bool]:
    """Per metadata field, whether the answer states the label's value (nothing stated: wrong)."""
    if stated is None:
        return dict.fromkeys(METADATA_FIELDS, False)
    true_castling = "".join(ltr for c in chess.COLORS for ltr in castling_letters(true_board, c))
    stated_castling = "".join(ltr for ltr, bb in _RAW_CASTLING if stated.castling_rights & bb)
    stated_ep = chess.square_name(stated.ep_square) if stated.ep_square is not None else None
    return {
        "side_to_move": stated.turn == true_board.turn,
        "castling_rights": stated_castling == true_castling,
        "en_passant": stated_ep == en_passant_square(true_board),
    }


def _rate(flags: Iterable[bool]) -> float:
    values = list(flags)
    return sum(values) / len(values)


def _square_accuracy(scores: Sequence[SampleScore]) -> list[float]:
    wrong = Counter(square for s in scores for square in s.wrong_squares)
    return [1 - wrong[square] / len(scores) for square in chess.SQUARES]


def _confusion_matrix(scores: Sequence[SampleScore]) -> dict:
    size = len(SQUARE_CLASSES)
    counts = [[0] * size for _ in range(size)]
    unparsed = [0] * size
    for s in scores:
        predicted = s.pred_symbols
        for square, true_symbol in enumerate(s.true_symbols):
            row = _CLASS_INDEX[true_symbol]
            if predicted is None:
                unparsed[row] += 1
            else:
                counts[row][_CLASS_INDEX[predicted[square]]] += 1
    return {"classes": list(SQUARE_CLASSES), "counts": counts, "unparsed_by_true_class": unparsed}


def _per_class(confusion: dict) -> dict:
    counts, unparsed = confusion["counts"], confusion["unparsed_by_true_class"]
    per_class = {}
    for index, symbol in enumerate(confusion["classes"]):
        right = counts[index][index]
        predicted = sum(row[index] for row in counts)
        support = sum(counts[index]) + unparsed[index]
        per_class[symbol] = {
            "precision": right / predicted if predicted else None,
            "recall": right / support if support else None,
            "support": support,
        }
    return per_class


def _answer_tokens(scores: Sequence[SampleScore]) -> dict | None:
    tokens = [
        s.prediction["answer_tokens"]
        for s in scores
        if s.prediction is not None and s.prediction.get("answer_tokens") is not None
    ]
    if not tokens:
        return None
    truncated = sum(bool(s.prediction and s.prediction.get("truncated")) for s in scores)
    return {
        "mean": statistics.fmean(tokens),
        "median": statistics.median(tokens),
        "max": max(tokens),
        "n": len(tokens),
        "truncated": truncated,
    }


def _boards_per_second(scores: Sequence[SampleScore], elapsed: float | None) -> float | None:
    answered = [s.prediction for s in scores if s.prediction is not None]
    if elapsed is None:
        seconds = [record.get("seconds") for record in answered]
        if not answered or any(value is None for value in seconds):
            return None
        elapsed = sum(seconds)
    return len(answered) / elapsed if elapsed > 0 else None


def _metadata_accuracy(scores: Sequence[SampleScore]) -> dict:
    constant = chess.Board(None)  # white to move, no castling, no en passant
    accuracy: dict = {
        name: _rate(s.metadata_right[name] for s in scores) for name in METADATA_FIELDS
    }
    accuracy["constant_baseline"] = {
        name: _rate(_metadata_right(s.true_board, constant)[name] for s in scores)
        for name in METADATA_FIELDS
    }
    return accuracy


def _orientation(label: dict) -> str | None:
    if "flipped" not in label:
        return None
    return "black_bottom" if label["flipped"] else "white_bottom"


def _style_group(label: dict) -> str | None:
    style = label.get("style")
    return style.split("/")[0] if style else None


def design_of(label: dict) -> str | None:
    """The piece design a rendered label's board was drawn in (None: not a known set)."""
    from chessvlm.rendering import record_piece_set

    source = record_piece_set(label)
    return source.design if source else None


def _design_breakdown(scores: Sequence[SampleScore]) -> dict | None:
    from chessvlm.rendering import held_out_designs

    groups = _breakdown(scores, design_of)
    held = held_out_designs()
    return {
        name: {**figures, "held_out": name in held} for name, figures in (groups or {}).items()
    } or None


def _breakdown(scores: Sequence[SampleScore], key) -> dict | None:
    groups: dict[str, list[SampleScore]] = {}
    for s in scores:
        value = key(s.label)
        if value is not None:
            groups.setdefault(str(value), []).append(s)
    if not groups:
        return None
    return {name: main_figures(group) for name, group in sorted(groups.items())}
