"""The `chessvlm serve` app: a page that reads board images and the JSON API behind it.

- `GET /`: the page (its script and style under `/static`; nothing comes from elsewhere).
- `POST /api/read`: an image (multipart field `file`, or the raw body) -> one result per board,
  each the JSON `chessvlm predict --format json` prints. As in `predict`, the board finder
  first finds every board in the picture (a screenshot, a page) and each is read from its
  crop; `detect=false` (or `serve --no-detect`) reads the image as one board cropped to its
  squares, the reader's locator cutting away a margin.
- `GET /api/position`: a placement with side to move, castling and a half turn -> its FEN and
  python-chess's drawing, with the uncertain squares marked. The page's controls use it.
- `GET /api/health`, and the OpenAPI docs at `/docs` and `/redoc`, served without a CDN.

Concurrent reads are gathered into model batches (`MicroBatcher`). Bad input gets a 4xx JSON
error `{"error": {"code", "message"}}`; an unexpected failure a 500 of the same shape,
without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import chess
import chess.svg
import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image

from chessvlm.confidence import DEFAULT_UNCERTAIN_BELOW
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.finder import board_pixels, find_boards
from chessvlm.positions import board_from_fen
from chessvlm.predict import (
    Metadata,
    NoBoardFound,
    check_flags,
    complete_position,
    reader_placement,
    reading_fields,
    result_record,
)
from chessvlm.reader.images import crop_board, load_scene, open_image, scene_array, usable_box
from chessvlm.reader.margin import margin_strips
from chessvlm.reader.model import LOCATOR_SIZE
from chessvlm.reader.read import (
    BoardReading,
    find_exact_cuts,
    fraction_box,
    image_pixel_box,
    image_pixel_corners,
    load_reader,
    loaded_fraction_box,
    loaded_pixel_box,
    locate,
    read_arrays,
    worth_reading_again,
)
from chessvlm.serve.batching import MicroBatcher
from chessvlm.serve.uploads import CONTENT_TYPES, UploadError, UploadLimits, receive_upload

STATIC = Path(__file__).resolve().parent / "static"
# uvicorn's worker processes build their app from this variable (`app_from_environment`).
CONFIG_VARIABLE = "CHESSVLM_SERVE_CONFIG"
ORIENTATIONS = {"auto": None, "white": False, "black": True}
UNCERTAIN_FILL = "#e0303080"
BOARD_PIXELS = 360
# A square's index XOR 63 is the square half a turn away (a1 <-> h8).
_HALF_TURN_SQUARE = 63


@dataclass(frozen=True)
class ServeConfig:
    """What the app reads with and how: the reader checkpoint or its ONNX export (None: the
    shipped reader), upload limits, batching (at most `max_batch` boards a model call,
    gathered for up to `max_wait_ms` after the first), the threads that decode images (and
    run the finder), and whether the finder looks for boards by default (`detect`)."""

    model: str | None = None
    detect: bool = True
    limits: UploadLimits = field(default_factory=UploadLimits)
    max_batch: int = 16
    max_wait_ms: float = 2.0
    decode_threads: int = 2

    def to_json(self) -> str:
        """The config as JSON, for `CONFIG_VARIABLE`."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """Inverse of `to_json`."""
        data = json.loads(text)
        return cls(**{**data, "limits": UploadLimits(**data["limits"])})


@dataclass(frozen=True)
class BoardInput:
    """One board to read in a model batch: cut out to its squares, its margins
    (`chessvlm.reader.margin.margin_strips`) and its known orientation (None: read it)."""

    crop: np.ndarray
    margins: np.ndarray
    flipped: bool | None


@dataclass(frozen=True)
class CutBoard:
    """A board cut out of an upload: its pixels at the network's size, the margins outside
    them, and where it was, in the image file's pixels (box: left, top, right, bottom;
    corners from the finder only). A board the locator placed keeps its `image` and its
    `located` box (the image's pixels as decoded), to be cut again at its exact corners if
    it reads unsure (`ServedModel.cut_again`)."""

    crop: np.ndarray
    margins: np.ndarray
    box: tuple[float, float, float, float]
    corners: tuple[tuple[float, float], ...] | None = None
    image: Image.Image | None = None
    located: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class ServedModel:
    """What the app reads with: the board side its network reads at, its board locator
    (uint8 scenes N x L x L x 3 -> boxes N x 4, fractions of the image) and its network
    (crops, known orientations and margins -> readings)."""

    image_size: int
    locate: Callable[[np.ndarray], np.ndarray]
    read_crops: Callable[
        [Sequence[np.ndarray], Sequence[bool | None], np.ndarray], list[BoardReading]
    ]

    def read_batch(self, items: Sequence[BoardInput]) -> list[BoardReading]:
        """Read a model batch, the results in the items' order."""
        crops = [item.crop for item in items]
        margins = np.stack([item.margins for item in items])
        return self.read_crops(crops, [item.flipped for item in items], margins)

    def cut_boards(self, data: bytes, name: str, detect: bool) -> list[CutBoard]:
        """The boards of an uploaded picture, cut out: every board the finder sees, a picture
        of one board found by the locator as `chessvlm predict` finds it (`NoBoardFound`
        when there is none); or, without `detect`, the image as one board whose squares the
        locator finds. Run on a decoding thread: the locator reads one image as fast a board
        as in a batch, and only the network waits for a batch."""
        if detect:
            image = open_image(data)
            found = find_boards(image, locate=self.locate_board)
            if not found:
                raise NoBoardFound(name, "no board found")
            size = self.image_size
            return [
                CutBoard(
                    board_pixels(image, board, size),
                    margin_strips(image, fraction_box(image, board.box)),
                    board.box,
                    board.corners,
                    image,
                    board.box if board.found_by == "locator" else None,
                )
                for board in found
            ]
        image, scene = load_scene(data, self.image_size, LOCATOR_SIZE)
        box = usable_box(self.locate(scene[np.newaxis])[0], image)
        crop = crop_board(image, box, self.image_size)
        margins, pixels = margin_strips(image, box), image_pixel_box(image, box)
        return [CutBoard(crop, margins, pixels, None, image, loaded_pixel_box(image, box))]

    def cut_again(
        self, boards: Sequence[CutBoard], readings: Sequence[BoardReading]
    ) -> list[tuple[int, CutBoard]]:
        """The boards the locator placed that read unsure, cut again at the exact corners
        the corner search finds there (`chessvlm.reader.read.find_exact_cuts`, as `chessvlm
        predict` reads them): (place among `boards`, the new cut) each. Run on a decoding
        thread; the cuts are read in the model's batches."""
        places = [index for index, board in enumerate(boards) if board.located is not None]
        images = [boards[index].image for index in places]
        cuts = find_exact_cuts(
            [readings[index] for index in places],
            images,
            [boards[index].located for index in places],
            self.image_size,
        )
        if not cuts.indices:
            return []
        again = []
        for index, board, crop, margins in zip(
            cuts.indices, cuts.boards, cuts.crops, cuts.margins, strict=True
        ):
            image = images[index]
            box = image_pixel_box(image, loaded_fraction_box(image, board.box))
            cut = CutBoard(crop, margins, box, image_pixel_corners(image, board.corners))
            again.append((places[index], cut))
        return again

    def locate_board(self, image: Image.Image) -> tuple[float, float, float, float]:
        """Where the locator puts the squares of `image`'s board (fractions; `usable_box`)."""
        return usable_box(self.locate(scene_array(image, LOCATOR_SIZE)[np.newaxis])[0], image)


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The app for `config` (default: the shipped reader, default limits). The reader is
    loaded here, so a bad `--model` fails before the server listens."""
    from chessvlm.reader.default import default_reader

    config = config or ServeConfig()
    model = str(config.model or default_reader())
    served = load_model(model)
    batcher: MicroBatcher[BoardInput, BoardReading] = MicroBatcher(
        served.read_batch,
        max_batch=config.max_batch,
        max_wait=config.max_wait_ms / 1000,
    )

    # Images are decoded (and searched for boards) on a few threads of their own, not one
    # per waiting request: more than cores gain nothing on a busy server, and each holds
    # its memory.
    decoder = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        decoder.shutdown(wait=True)

    app = FastAPIOffline(
        title="chessvlm",
        summary="Chess board images to positions (FEN and the seed's position JSON).",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    _add_error_handlers(app)
    _add_page(app)
    _add_api(app, config, model, served, batcher, decoder)
    return app


def app_from_environment() -> FastAPI:
    """The app for the config in `CONFIG_VARIABLE` (how uvicorn's worker processes build it)."""
    text = os.environ.get(CONFIG_VARIABLE)
    return create_app(ServeConfig.from_json(text) if text else None)


def load_model(model: str) -> ServedModel:
    """How to read with `model`: a reader checkpoint under torch, or its ONNX export
    (`chessvlm export`) under onnxruntime."""
    from chessvlm.export import is_onnx_export, load_onnx_reader

    if is_onnx_export(model):
        exported = load_onnx_reader(model)
        return ServedModel(exported.image_size, exported.locate, exported.read_arrays)
    reader = load_reader(model)

    def locate_scenes(scenes: np.ndarray) -> np.ndarray:
        return locate(reader.model, torch.from_numpy(scenes).permute(0, 3, 1, 2)).numpy()

    return ServedModel(
        reader.image_size,
        locate_scenes,
        lambda crops, flipped, margins: read_arrays(
            reader, crops, flipped=flipped, margins=margins
        ),
    )


async def _read_cuts(
    batcher: MicroBatcher[BoardInput, BoardReading],
    boards: Sequence[CutBoard],
    flipped: bool | None,
) -> list[BoardReading]:
    """`boards` read in the model's batches, in order."""
    inputs = (BoardInput(board.crop, board.margins, flipped) for board in boards)
    return list(await asyncio.gather(*(batcher.submit(item) for item in inputs)))


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(_: Request, error: UploadError) -> JSONResponse:
        return _error(error.status, error.code, error.message)

    @app.exception_handler(NoBoardFound)
    async def no_board(_: Request, error: NoBoardFound) -> JSONResponse:
        return _error(422, "no_board_found", str(error))

    @app.exception_handler(InputError)
    async def input_error(_: Request, error: InputError) -> JSONResponse:
        return _error(422, "unreadable_image", str(error))

    @app.exception_handler(ChessVLMError)
    async def bad_request(_: Request, error: ChessVLMError) -> JSONResponse:
        return _error(400, "bad_parameter", str(error))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        return _error(422, "bad_parameter", problems)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        # Starlette still raises the error after this answer, so the server logs it.
        return _error(500, "internal_error", f"the server failed ({type(error).__name__})")


def _add_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")


_READ_BODY = {
    "requestBody": {
        "required": True,
        "description": "An image: a multipart form with the file in field `file`, or the "
        "image itself as the body with its content type.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in CONTENT_TYPES},
        },
    }
}


def _add_api(
    app: FastAPI,
    config: ServeConfig,
    model: str,
    served: ServedModel,
    batcher: MicroBatcher[BoardInput, BoardReading],
    decoder: ThreadPoolExecutor,
) -> None:
    @app.get("/api/health", summary="Whether the server reads, and what with")
    async def health() -> dict[str, object]:
        stats = batcher.stats
        return {
            "status": "ok",
            "model": model,
            "boards_read": stats.items,
            "model_batches": stats.batches,
            "largest_batch": stats.largest,
            "limits": asdict(config.limits),
        }

    @app.post(
        "/api/read",
        summary="Read the boards in an image",
        openapi_extra=_READ_BODY,
        responses={
            400: {"description": "bad parameter or form"},
            408: {"description": "upload too slow"},
            413: {"description": "too many bytes or pixels"},
            415: {"description": "not an accepted image type"},
            422: {"description": "an image that cannot be read as a board"},
        },
    )
    async def read(
        request: Request,
        to_move: Literal["w", "b"] | None = Query(None, description="side to move"),
        castling: str | None = Query(None, description="FEN castling field, e.g. KQkq or -"),
        en_passant: str | None = Query(None, description="en passant square, e.g. e3"),
        orientation: Literal["auto", "white", "black"] = Query(
            "auto", description="which side is at the bottom of the image (auto: read it)"
        ),
        detect: bool = Query(
            config.detect,
            description="find every board in the picture (false: the image is one board "
            "cropped to its squares)",
        ),
    ) -> dict[str, object]:
        """One result per board found, in reading order, each as `chessvlm predict --format
        json` prints it, plus the image's name and size. A picture with no board is a 422
        `no_board_found`."""
        flags = Metadata(to_move, castling, en_passant)
        check_flags(flags)
        upload = await receive_upload(request, config.limits)
        flipped = ORIENTATIONS[orientation]
        try:
            with batcher.coming():
                boards = await asyncio.get_running_loop().run_in_executor(
                    decoder, served.cut_boards, upload.data, upload.name, detect
                )
        except InputError as error:
            raise type(error)(upload.name, error.problem) from None
        readings = await _read_cuts(batcher, boards, flipped)
        # Most uploads need no second look: only those send the corner search to a decoding
        # thread, where it would otherwise queue behind other uploads.
        if any(
            board.located is not None and worth_reading_again(reading)
            for board, reading in zip(boards, readings, strict=True)
        ):
            again = await asyncio.get_running_loop().run_in_executor(
                decoder, served.cut_again, boards, readings
            )
            cuts = [cut for _, cut in again]
            for (index, cut), reading in zip(
                again, await _read_cuts(batcher, cuts, flipped), strict=True
            ):
                boards[index], readings[index] = cut, reading
        results = [
            _result(upload.name, number, reading, board, flags, model, flipped)
            for number, (reading, board) in enumerate(zip(readings, boards, strict=True), 1)
        ]
        size = {"width": upload.width, "height": upload.height, "format": upload.format}
        return {"image": {"name": upload.name, **size}, "boards": results}

    @app.get("/api/position", summary="A placement's FEN and drawing, with the page's controls")
    async def position(
        placement: str = Query(description="FEN placement (or a whole FEN: its pieces count)"),
        to_move: Literal["w", "b"] = "w",
        castling: str = Query("-", description="castling rights asked for, e.g. KQkq or -"),
        rotate: bool = Query(False, description="turn the placement half a turn"),
        bottom: Literal["white", "black"] = Query(
            "white", description="the side at the bottom of the image, as read"
        ),
        uncertain: str = Query("", description="comma-separated squares to mark, e.g. e4,d5"),
    ) -> dict[str, object]:
        """The FEN (castling rights the placement cannot have are dropped) and an SVG drawing
        seen as the image shows it. `rotate` corrects a board read in the wrong orientation:
        the placement turns half a turn, and so do the side at the bottom and the marks."""
        check_flags(Metadata(to_move, castling, None))
        board = board_from_fen(placement)
        marked = _squares(uncertain)
        if rotate:
            board = board.transform(_half_turn)
            marked = [_HALF_TURN_SQUARE ^ square for square in marked]
            bottom = "black" if bottom == "white" else "white"
        board.turn = to_move == "w"
        board.ep_square = None
        board.set_castling_fen(castling)
        # Rights the placement cannot have (no king or rook at home) are dropped, as in a FEN.
        board.castling_rights = board.clean_castling_rights()
        drawing = chess.svg.board(
            board,
            orientation=chess.BLACK if bottom == "black" else chess.WHITE,
            squares=chess.SquareSet(marked),
            fill=dict.fromkeys(marked, UNCERTAIN_FILL),
            size=BOARD_PIXELS,
        )
        return {
            "fen": board.fen(),
            "placement": board.board_fen(),
            "bottom": bottom,
            "uncertain": [chess.square_name(square) for square in marked],
            "problems": _problems(board),
            "svg": drawing,
        }


def _result(
    name: str,
    number: int,
    reading: BoardReading,
    cut: CutBoard,
    flags: Metadata,
    model: str,
    flipped: bool | None,
) -> dict[str, object]:
    """One board's result as `chessvlm predict --format json` prints it."""
    placement = reader_placement(reading, model, orientation_given=flipped)
    placement.box, placement.corners = cut.box, cut.corners
    board, notes = complete_position(placement, flags)
    extra = {"board": number, **reading_fields(placement, board, DEFAULT_UNCERTAIN_BELOW)}
    return result_record(name, board, notes, extra)


def _half_turn(bitboard: chess.Bitboard) -> chess.Bitboard:
    return chess.flip_vertical(chess.flip_horizontal(bitboard))


def _squares(text: str) -> list[chess.Square]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in chess.SQUARE_NAMES]
    if unknown:
        raise ChessVLMError(f"uncertain: {', '.join(unknown)} are not squares like e4")
    return [chess.parse_square(name) for name in names]


def _problems(board: chess.Board) -> list[str]:
    status = board.status()
    return [
        name.lower().replace("_", " ")
        for name, flag in chess.Status.__members__.items()
        if flag and flag in status
    ]
