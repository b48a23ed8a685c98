"""The default board reader shipped inside the package, and the one command that rebuilds it.

`chessvlm predict board.png` reads with the checkpoint in `DEFAULT_READER` when no `--model`
is given. It is trained only on the piece designs and board looks of the `designs-seen`
style, so its figures on `designs-held-out` are those of designs it never saw.
`chessvlm reader build-default` renders its data, trains its readers with `DefaultRecipe`
and writes their ensemble's checkpoint into the package (or `--out`), then trains the
position prior that every reader's orientation weighs (`chessvlm.reader.orientation`,
`PriorRecipe`) and the margin reader that reads coordinates printed outside the board
(`chessvlm.reader.margin`, `MarginRecipe`, on the same training boards), the square
context that weighs each square's reading by the rest of the board (`chessvlm.reader.context`,
`ContextRecipe`) and the square matcher that weighs it by the squares that look alike
(`chessvlm.reader.matching`, `MatcherRecipe`, on the same training boards less those of the
sets drawn from 3D models), and writes them
into the package (or `--prior_out`, `--margin_out`, `--context_out`, `--matcher_out`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from chessvlm.errors import ChessVLMError

if TYPE_CHECKING:
    from chessvlm.reader.context import ContextRecipe
    from chessvlm.reader.margin import MarginRecipe
    from chessvlm.reader.matching import MatcherRecipe
    from chessvlm.reader.orientation import PriorRecipe

_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_READER = _WEIGHTS / "reader"
DEFAULT_POSITION_PRIOR = _WEIGHTS / "position_prior"
DEFAULT_MARGIN_READER = _WEIGHTS / "margin"
DEFAULT_SQUARE_CONTEXT = _WEIGHTS / "context"
DEFAULT_SQUARE_MATCHER = _WEIGHTS / "matcher"


@dataclasses.dataclass(frozen=True)
class DefaultRecipe:
    """How the shipped reader is made: data, style, seeds and training length.

    Training is bounded by epochs, not minutes, so the same command makes the same number of
    steps on any machine. `members` readers train on the same boards from the seeds `seed`,
    `seed + 1`, ...; the shipped checkpoint is their ensemble (`chessvlm.reader.ensemble`),
    its weights kept as `storage`. The first `always_members` read every board, the others
    only the boards on which those are unsure (`unsure_below`), so more members cost little
    reading time.
    """

    style: str = "designs-seen"
    train_samples: int = 20_000
    val_samples: int = 500
    seed: int = 0
    epochs: int = 12
    batch_size: int = 32
    members: int = 3
    always_members: int = 2
    unsure_below: float = 0.5
    storage: str = "int8"
    # Never `auto`: the command would train in bfloat16 on some CPUs and in float32 on others,
    # and make different weights. The shipped ones are float32's.
    precision: str = "float32"


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
    margin_out: str | Path = DEFAULT_MARGIN_READER,
    margin_recipe: MarginRecipe | None = None,
    context_out: str | Path = DEFAULT_SQUARE_CONTEXT,
    context_recipe: ContextRecipe | None = None,
    matcher_out: str | Path = DEFAULT_SQUARE_MATCHER,
    matcher_recipe: MatcherRecipe | None = None,
) -> Path:
    """Render the recipe's data into `work_dir`, train the recipe's readers there (all resume
    when run again) and write their ensemble, scored on the recipe's validation boards, into
    `out`; then train the position prior, the margin reader and the square context in
    `work_dir` (each kept for reruns of the same `prior_recipe`, `margin_recipe`,
    `context_recipe`) and copy them into `prior_out`, `margin_out` and `context_out`; then the
    square matcher, likewise (`matcher_recipe`, `matcher_out`)."""
    from chessvlm.datasets import synth_json_dataset
    from chessvlm.reader.context import ContextRecipe
    from chessvlm.reader.ensemble import combine_readers
    from chessvlm.reader.margin import MarginRecipe
    from chessvlm.reader.matching import MatcherRecipe
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
                precision=recipe.precision,
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
        storage=recipe.storage,
        always_members=recipe.always_members,
        unsure_below=recipe.unsure_below,
    )
    _build_position_prior(
        work_dir / "position_prior", Path(prior_out), prior_recipe or PriorRecipe()
    )
    _build_margin_reader(
        data_dir,
        work_dir / "margin",
        Path(margin_out),
        margin_recipe or MarginRecipe(),
        recipe.style,
    )
    _build_square_context(
        work_dir / "context", Path(context_out), context_recipe or ContextRecipe()
    )
    _build_square_matcher(
        data_dir,
        work_dir / "matcher",
        Path(matcher_out),
        matcher_recipe or MatcherRecipe(),
        workers,
    )
    return out


def _build_position_prior(work_dir: Path, out: Path, recipe: PriorRecipe) -> None:
    from chessvlm.reader.orientation import (
        PRIOR_CONFIG_FILE,
        PRIOR_WEIGHTS_FILE,
        save_position_prior,
        train_position_prior,
    )

    def make() -> None:
        prior, accuracy = train_position_prior(recipe)
        save_position_prior(prior, work_dir, recipe, accuracy)

    made_by = {"recipe": recipe.to_dict()}
    _made_once(work_dir, out, (PRIOR_WEIGHTS_FILE, PRIOR_CONFIG_FILE), made_by, make)


def _build_margin_reader(
    data_dir: Path, work_dir: Path, out: Path, recipe: MarginRecipe, style: str
) -> None:
    from chessvlm.reader.margin import (
        MARGIN_CONFIG_FILE,
        MARGIN_WEIGHTS_FILE,
        STRIPS,
        save_margin_reader,
        train_margin_reader,
    )
    from chessvlm.scenes import write_scenes

    def make() -> None:
        scenes = work_dir / "scenes"
        write_scenes(scenes, recipe.scenes, seed=recipe.seed, designs="seen", style=style)
        reader, figures = train_margin_reader(data_dir, recipe, scenes)
        save_margin_reader(reader, work_dir, recipe, figures)

    made_by = {"recipe": recipe.to_dict(), "strips": STRIPS}
    _made_once(work_dir, out, (MARGIN_WEIGHTS_FILE, MARGIN_CONFIG_FILE), made_by, make)


def _build_square_context(work_dir: Path, out: Path, recipe: ContextRecipe) -> None:
    from chessvlm.reader.context import CONTEXT_FILES, save_square_context, train_square_context

    def make() -> None:
        context, accuracy = train_square_context(recipe)
        save_square_context(context, work_dir, recipe, accuracy)

    _made_once(work_dir, out, CONTEXT_FILES, {"recipe": recipe.to_dict()}, make)


def _build_square_matcher(
    data_dir: Path, work_dir: Path, out: Path, recipe: MatcherRecipe, workers: int
) -> None:
    from chessvlm.reader.matching import (
        MATCHER_FILES,
        RELATIONS,
        save_square_matcher,
        train_square_matcher,
    )

    def make() -> None:
        matcher, figures = train_square_matcher(data_dir, recipe, workers)
        save_square_matcher(matcher, work_dir, recipe, figures)

    made_by = {"recipe": recipe.to_dict(), "relations": list(RELATIONS)}
    _made_once(work_dir, out, MATCHER_FILES, made_by, make)


def _made_once(
    work_dir: Path, out: Path, files: tuple[str, str], made_by: dict, make: Callable[[], None]
) -> None:
    """`make` the weights and config `files` in `work_dir` unless the config there holds
    every entry of `made_by` already (the recipe, and what else decides the weights), then
    copy them into `out`."""
    config_file = work_dir / files[1]
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if any(config.get(key) != value for key, value in made_by.items()):
        make()
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copyfile(work_dir / name, out / name)
