"""Readers trained apart, combined into one checkpoint that reads with all of them.

Readers of one spec trained from other seeds make different mistakes on piece designs none of
them saw; the mean of their square log-probabilities reads more of those boards right than
any one of them (`ReaderEnsemble`; docs/reader.md has the figures). `combine_readers` writes
such a checkpoint, scored and given its decoding on a validation split as `chessvlm reader
train` does for one reader; `load_reader` reads it like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chessvlm.errors import ChessVLMError
from chessvlm.positions import SQUARE_CLASSES
from chessvlm.reader.model import BoardReader, ReaderEnsemble, set_zoom_views
from chessvlm.reader.read import Reader, load_reader, save_checkpoint

# Half precision halves the file (the shipped default must stay small); loading turns the
# weights back into float32, and the readings agree with float32 weights' to rounding.
DEFAULT_STORAGE = "float16"
# What each member's own checkpoint said, kept in the ensemble's config as its provenance.
_MEMBER_FIELDS = (
    *("val", "epoch", "train_minutes", "train_cpu_minutes", "train_precision", "train_samples"),
    *("batch_size", "learning_rate", "augment", "built_by"),
)


def combine_readers(
    members: Sequence[str | Path],
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    workers: int = 2,
    extra_config: dict[str, Any] | None = None,
    paths_relative_to: str | Path | None = None,
    storage: str | None = None,
    always_members: int | None = None,
    unsure_below: float = 1.0,
    zoom_views: Sequence[float] = (),
) -> Path:
    """Write the reader checkpoints `members` as one ensemble checkpoint into `out` (a single
    member is written as one reader, in the same form).

    With `data_dir`, its `val` split scores the ensemble with each decoding and chooses the
    decoding and whether to report the side to move, as training does; without it, the first
    member's choices are kept. `extra_config` is merged into the written `reader.json`, which
    records each member's folder relative to `paths_relative_to` where one is given (a scratch
    folder whose place says nothing). `storage` is how the weights are kept
    (`chessvlm.reader.storage.STORAGES`; None: `DEFAULT_STORAGE`). With `always_members`,
    only that many (the first) read every board and the others only the boards on which
    those are unsure (`ReaderEnsemble`, `unsure_below`). `zoom_views` are the views each
    member reads every board in besides the cut (`BoardReader.forward`), whatever the members'
    own checkpoints say: an ensemble's members already differ where one view would.
    """
    readers = [load_reader(member, fold=False) for member in members]
    _check_compatible(readers)
    models = [reader.model for reader in readers]
    config = _ensemble_config(readers, paths_relative_to)
    if len(models) == 1:
        model = models[0]
    else:
        model = ReaderEnsemble(models, always_members, unsure_below)
        if always_members is not None:
            config |= {"always_members": always_members, "unsure_below": unsure_below}
    set_zoom_views(model, zoom_views)
    if zoom_views:
        config["zoom_views"] = [float(span) for span in zoom_views]
    if data_dir is not None:
        config |= _validation_choices(model, data_dir, readers[0].image_size, workers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config |= extra_config or {}
    save_checkpoint(model, out, config, storage=storage or DEFAULT_STORAGE)
    return out


def _ensemble_config(
    readers: Sequence[Reader], paths_relative_to: str | Path | None
) -> dict[str, Any]:
    """The ensemble's `reader.json`, before validation: the spec, the first member's
    decoding and each member's provenance."""
    first = readers[0].config
    config: dict[str, Any] = {
        "kind": "reader",
        "spec": first["spec"],
        "classes": list(SQUARE_CLASSES),
        "members": len(readers),
        "decode": first.get("decode", "argmax"),
        "predicts_to_move": all(reader.predicts_to_move for reader in readers),
        "member_checkpoints": [_member_summary(reader, paths_relative_to) for reader in readers],
    }
    minutes = [reader.config.get("train_minutes") for reader in readers]
    if None not in minutes:
        config["train_minutes"] = round(sum(minutes), 2)
    if len({reader.config.get("train_samples") for reader in readers}) == 1:
        config["train_samples"] = first.get("train_samples")
    return config


def _validation_choices(
    model: BoardReader | ReaderEnsemble, data_dir: str | Path, image_size: int, workers: int
) -> dict[str, Any]:
    """Scores on `data_dir`'s val split with each decoding, and what they choose."""
    from chessvlm.reader.data import load_board_set, read_split
    from chessvlm.reader.train import reads_side_to_move, score_decodings

    records = read_split(data_dir, "val")
    val = load_board_set(data_dir, records, image_size, workers=workers, desc="decoding val")
    best, by_decode = score_decodings(model, val)
    return {
        "decode": best,
        "val": by_decode[best],
        "val_by_decode": by_decode,
        "predicts_to_move": reads_side_to_move(by_decode[best]),
    }


def _check_compatible(readers: Sequence[Reader]) -> None:
    if not readers:
        raise ChessVLMError("no reader checkpoints to combine")
    for reader in readers:
        if reader.config.get("members", 1) != 1:
            raise ChessVLMError(f"{reader.path} is an ensemble already: give its members")
        if reader.config["spec"] != readers[0].config["spec"]:
            raise ChessVLMError(
                f"{reader.path} and {readers[0].path} are readers of different specs "
                "(encoder, sizes): an ensemble's readers must share one"
            )


def _member_summary(reader: Reader, paths_relative_to: str | Path | None) -> dict[str, Any]:
    path = reader.path if paths_relative_to is None else reader.path.relative_to(paths_relative_to)
    return {"path": path.as_posix()} | {
        name: reader.config[name] for name in _MEMBER_FIELDS if name in reader.config
    }
