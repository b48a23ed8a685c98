"""The default board reader shipped inside the package, and the one command that rebuilds it.

`chessvlm predict board.png` reads with the checkpoint in `DEFAULT_READER` when no `--model`
is given. It is trained only on the piece designs and board looks of the `designs-seen`
style, so its figures on `designs-held-out` are those of designs it never saw.
`chessvlm reader build-default` renders its data, trains its readers with `DefaultRecipe`
and writes their ensemble's checkpoint into the package (or `--out`), then trains the
position prior that every reader's orientation weighs (`chessvlm.reader.orientation`,
`PriorRecipe`) and writes it into the package (or `--prior_out`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from chessvlm.errors import ChessVLMError

if TYPE_CHECKING:
    from chessvlm.reader.orientation import PriorRecipe

_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_READER = _WEIGHTS / "reader"
DEFAULT_POSITION_PRIOR = _WEIGHTS / "position_prior"


@dataclasses.dataclass(frozen=True)
class DefaultRecipe:
    """How the shipped reader is made: data, style, seeds and training length.

    Training is bounded by epochs, not minutes, so the same command makes the same number of
    steps on any machine. `members` readers train on the same boards from the seeds `seed`,
    `seed + 1`, ...; the shipped checkpoint is their ensemble (`chessvlm.reader.ensemble`).
    """

    style: str = "designs-seen"
    train_samples: int = 20_000
    val_samples: int = 500
    seed: int = 0
    epochs: int = 12
    batch_size: int = 32
    members: int = 2


def default_reader() -> Path:
    """The shipped checkpoint folder; a clear error when the package was built without it."""
    from chessvlm.reader.read import is_reader_checkpoint

    if not is_reader_checkpoint(DEFAULT_READER):
        raise ChessVLMError(
            f"this install has no default reader in {DEFAULT_READER}: pass --model with a "
            "reader checkpoint, or make one with `chessvlm reader build-default`"
        )
    return DEFAULT_READER


def build_default_reader(
    work_dir: str | Path,
    out: str | Path = DEFAULT_READER,
    recipe: DefaultRecipe = DefaultRecipe(),
    workers: int = 2,
    prior_out: str | Path = DEFAULT_POSITION_PRIOR,
    prior_recipe: PriorRecipe | None = None,
) -> Path:
    """Render the recipe's data into `work_dir`, train the recipe's readers there (all resume
    when run again) and write their ensemble, scored on the recipe's validation boards, into
    `out`; then train the position prior in `work_dir` (kept for reruns of the same
    `prior_recipe`) and copy it into `prior_out`."""
    from chessvlm.datasets import synth_json_dataset
    from chessvlm.reader.ensemble import combine_readers
    from chessvlm.reader.orientation import PriorRecipe
    from chessvlm.reader.train import ReaderTrainConfig, train_reader

    work_dir, out = Path(work_dir), Path(out)
    data_dir = work_dir / "data"
    counts = {"train": recipe.train_samples, "val": recipe.val_samples}
    synth_json_dataset(data_dir, counts, seed=recipe.seed, style=recipe.style, workers=workers)
    seeds = range(recipe.seed, recipe.seed + recipe.members)
    members = [
        train_reader(
            ReaderTrainConfig(
                data_dir=str(data_dir),
                out=str(work_dir / "readers" / f"seed{seed}"),
                epochs=recipe.epochs,
                batch_size=recipe.batch_size,
                seed=seed,
                workers=workers,
            )
        )
        for seed in seeds
    ]
    built_by = {"command": "chessvlm reader build-default", **dataclasses.asdict(recipe)}
    combine_readers(
        members,
        out,
        data_dir=data_dir,
        workers=workers,
        extra_config={"built_by": built_by},
        paths_relative_to=work_dir,
    )
    prior_recipe = prior_recipe or PriorRecipe()
    _build_position_prior(work_dir / "position_prior", Path(prior_out), prior_recipe)
    return out


def _build_position_prior(work_dir: Path, out: Path, recipe: PriorRecipe) -> None:
    from chessvlm.reader.orientation import (
        PRIOR_CONFIG_FILE,
        PRIOR_WEIGHTS_FILE,
        save_position_prior,
        train_position_prior,
    )

    config = work_dir / PRIOR_CONFIG_FILE
    made = config.is_file() and json.loads(config.read_text(encoding="utf-8"))["recipe"]
    if made != recipe.to_dict():
        prior, accuracy = train_position_prior(recipe)
        save_position_prior(prior, work_dir, recipe, accuracy)
    out.mkdir(parents=True, exist_ok=True)
    for name in (PRIOR_WEIGHTS_FILE, PRIOR_CONFIG_FILE):
        shutil.copyfile(work_dir / name, out / name)
