"""`chessvlm serve`'s API with FastAPI's test client: good images, bad ones, too large, wrong
type; the page's assets; batching of concurrent reads; a slow client against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
import time

import chess
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fixtures import FENS, board_png, serve_command

from chessvlm.cli import main
from chessvlm.reader.default import default_reader
from chessvlm.reader.read import BoardReading
from chessvlm.serve.app import STATIC, BoardInput, ServeConfig, create_app, load_model
from chessvlm.serve.batching import MicroBatcher, power_of_two_chunks
from chessvlm.serve.uploads import UploadLimits

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app()) as test_client:
        yield test_client


def limited_client(**limits) -> TestClient:
    return TestClient(create_app(ServeConfig(limits=UploadLimits(**limits))))


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    return response.json()["error"]


# --------------------------------------------------------------------------- good images


@pytest.mark.parametrize("fen", FENS)
def test_a_raw_image_body_is_read(client, fen):
    response = client.post("/api/read", content=board_png(fen), headers=PNG)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["image"] == {"name": "upload", "width": 512, "height": 512, "format": "PNG"}
    (board,) = answer["boards"]
    assert board["fen"].split()[0] == chess.Board(fen).board_fen()
    assert board["board_box"] == pytest.approx([0, 0, 512, 512], abs=8)
    assert {entry["square"] for entry in board["uncertain_squares"]} <= set(chess.SQUARE_NAMES)


# A board from black's side whose position looks alike from either side, its coordinates
# printed outside the squares: only the margin reader can tell which side is at the bottom.
OUTSIDE_COORDINATES = {
    "fen": "8/8/2kn4/8/8/4NK2/8/8 w - - 0 1",
    "size": 320,
    "flipped": True,
    "coordinates": True,
    "coordinate_place": "outside",
}


@pytest.mark.parametrize("look", [{"fen": FENS[1]}, OUTSIDE_COORDINATES], ids=["plain", "outside"])
@pytest.mark.parametrize("detect", [True, False])
def test_the_api_returns_what_predict_prints(client, tmp_path, capsys, detect, look):
    path = tmp_path / "board.png"
    path.write_bytes(board_png(**look))
    flags = [] if detect else ["--no-detect"]
    assert main(["predict", str(path), "--to-move", "b", *flags]) == 0
    printed = json.loads(capsys.readouterr().out)
    with path.open("rb") as upload:
        response = client.post(
            f"/api/read?to_move=b&detect={str(detect).lower()}",
            files={"file": ("board.png", upload, "image/png")},
        )
    (served,) = response.json()["boards"]
    assert served["image"] == "board.png"
    assert ("corners" in served) is detect  # the finder's; the locator gives a box only
    printed["image"] = "board.png"
    assert served == printed
    if look.get("flipped"):
        assert served["notes"]["orientation"].startswith("black at the bottom (probability")
        assert served["orientation_probability"] > 0.999


def test_every_board_of_a_screenshot_is_read_in_reading_order(client):
    page = Image.new("RGB", (1000, 560), (40, 44, 52))
    for fen, left in zip(FENS, (40, 520), strict=True):
        page.paste(Image.open(io.BytesIO(board_png(fen, size=440))), (left, 60))
    buffer = io.BytesIO()
    page.save(buffer, "PNG")
    response = client.post("/api/read", content=buffer.getvalue(), headers=PNG)
    assert response.status_code == 200, response.text
    boards = response.json()["boards"]
    assert [board["board"] for board in boards] == [1, 2]
    assert [board["fen"].split()[0] for board in boards] == [
        chess.Board(fen).board_fen() for fen in FENS
    ]
    assert boards[0]["board_box"] == pytest.approx([40, 60, 480, 500], abs=6)
    assert boards[1]["board_box"] == pytest.approx([520, 60, 960, 500], abs=6)


def test_a_picture_without_a_board_is_no_empty_board(client):
    error = error_of(client.post("/api/read", content=_image((640, 400)), headers=PNG), 422)
    assert error == {"code": "no_board_found", "message": "upload: no board found"}


def test_a_server_without_the_finder_reads_the_upload_as_one_board():
    with TestClient(create_app(ServeConfig(detect=False))) as plain:
        response = plain.post("/api/read", content=board_png(), headers=PNG)
        (board,) = response.json()["boards"]
        assert "corners" not in board
        assert board["fen"].split()[0] == chess.Board().board_fen()
        detected = plain.post("/api/read?detect=true", content=board_png(), headers=PNG)
        assert "corners" in detected.json()["boards"][0]


def test_metadata_and_orientation_parameters(client):
    query = "to_move=b&castling=kq&orientation=white"
    response = client.post(f"/api/read?{query}", content=board_png(), headers=PNG)
    (board,) = response.json()["boards"]
    assert board["fen"].split()[1:3] == ["b", "kq"]
    assert board["notes"]["orientation"] == "white at the bottom (from --orientation)"
    assert "orientation_probability" not in board


def test_a_jpeg_with_a_margin_is_read(client):
    image = Image.open(io.BytesIO(board_png(size=400)))
    framed = Image.new("RGB", (480, 440), "white")
    framed.paste(image, (50, 20))
    buffer = io.BytesIO()
    framed.save(buffer, "JPEG", quality=90)
    response = client.post(
        "/api/read", content=buffer.getvalue(), headers={"content-type": "image/jpeg"}
    )
    (board,) = response.json()["boards"]
    assert board["fen"].split()[0] == chess.Board().board_fen()
    assert board["board_box"] == pytest.approx([50, 20, 450, 420], abs=12)


# --------------------------------------------------------------------------- bad input


def _ico() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "ICO")
    return buffer.getvalue()


def _image(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "words"),
    [
        (b"", "image/png", 400, "empty_upload", "no bytes"),
        (b"not an image at all", "image/png", 422, "not_an_image", "Pillow"),
        (board_png()[:3000], "image/png", 422, "unreadable_image", "cannot decode"),
        (board_png(), "text/plain", 415, "unsupported_type", "'text/plain'"),
        (board_png(), None, 415, "unsupported_type", "'none'"),
        (_ico(), "image/png", 415, "unsupported_format", "ICO"),
        (_image((40, 40)), "image/png", 422, "unreadable_image", "64 px"),
        (_image((400, 100)), "image/png", 422, "unreadable_image", "far from square"),
    ],
)
def test_bad_uploads_get_a_4xx_error_naming_the_problem(
    client, body, content_type, status, code, words
):
    # Without the finder, as one cropped board: the checks that it can be one board apply.
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/api/read?detect=false", content=body, headers=headers)
    error = error_of(response, status)
    assert error["code"] == code
    assert words in error["message"]


def test_a_form_without_a_file_or_with_a_wrong_type(client):
    files = {"image": ("board.png", board_png(), "image/png")}
    error = error_of(client.post("/api/read", files=files), 400)
    assert error["code"] == "no_file"
    assert "'file'" in error["message"]
    files = {"file": ("board.pdf", b"%PDF-1.4", "application/pdf")}
    error = error_of(client.post("/api/read", files=files), 415)
    assert "'application/pdf'" in error["message"]


def test_uploads_over_the_size_limit_are_refused_declared_or_streamed():
    body = board_png()
    with limited_client(max_bytes=len(body) - 1) as small:
        error = error_of(small.post("/api/read", content=body, headers=PNG), 413)
        assert error["code"] == "upload_too_large"
        assert f"{len(body) - 1:,}" in error["message"]
        # No Content-Length: the body is counted as it arrives.
        chunks = (body[start : start + 4096] for start in range(0, len(body), 4096))
        error = error_of(small.post("/api/read", content=chunks, headers=PNG), 413)
        assert error["code"] == "upload_too_large"
        files = {"file": ("board.png", body, "image/png")}
        assert error_of(small.post("/api/read", files=files), 413)["code"] == "upload_too_large"


def test_images_over_the_pixel_limit_are_refused_before_decoding():
    with limited_client(max_pixels=512 * 512 - 1) as small:
        error = error_of(small.post("/api/read", content=board_png(), headers=PNG), 413)
    assert error["code"] == "too_many_pixels"
    assert "512x512 is 262,144 pixels" in error["message"]


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [("to_move=x", 422, "to_move"), ("castling=KX", 400, "castling"), ("en_passant=e4", 400, "e4")],
)
def test_bad_parameters_are_named(client, query, status, words):
    error = error_of(client.post(f"/api/read?{query}", content=board_png(), headers=PNG), status)
    assert words in error["message"]


def test_a_server_failure_is_a_json_500_without_traceback():
    app = create_app()

    def broken(items):
        raise RuntimeError("secret internals")

    app.state.batcher.process = broken
    with TestClient(app, raise_server_exceptions=False) as failing:
        response = failing.post("/api/read", content=board_png(), headers=PNG)
    error = error_of(response, 500)
    assert error == {"code": "internal_error", "message": "the server failed (RuntimeError)"}


# --------------------------------------------------------------------------- the page's API


def test_position_rotates_marks_and_cleans_castling(client):
    query = {
        "placement": chess.STARTING_BOARD_FEN,
        "to_move": "b",
        "castling": "KQkq",
        "rotate": "true",
        "uncertain": "e2,a1",
    }
    answer = client.get("/api/position", params=query).json()
    assert answer["placement"] == "RNBKQBNR/PPPPPPPP/8/8/8/8/pppppppp/rnbkqbnr"
    assert answer["fen"] == "RNBKQBNR/PPPPPPPP/8/8/8/8/pppppppp/rnbkqbnr b - - 0 1"
    assert answer["bottom"] == "black"
    assert answer["uncertain"] == ["d7", "h8"]
    assert answer["svg"].startswith("<svg") and answer["svg"].count('class="square') == 64
    assert answer["problems"] == []
    plain = client.get("/api/position", params={**query, "rotate": "false"}).json()
    assert plain["fen"] == chess.STARTING_FEN.replace(" w ", " b ")
    assert plain["problems"] == []
    kingless = client.get("/api/position", params={"placement": "8/8/8/8/8/8/8/8"}).json()
    assert "no white king" in kingless["problems"]


def test_position_errors_name_the_parameter(client):
    error = error_of(client.get("/api/position", params={"placement": "8/8/x"}), 400)
    assert "8/8/x" in error["message"]
    params = {"placement": chess.STARTING_BOARD_FEN, "uncertain": "e9"}
    error = error_of(client.get("/api/position", params=params), 400)
    assert "e9" in error["message"]


def test_health_and_the_offline_docs(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["boards_read"] >= 0
    assert "/api/read" in client.get("/openapi.json").json()["paths"]
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn" not in html.lower() and "https://" not in html


def test_the_page_and_its_assets_come_from_the_app(client):
    page = client.get("/").text
    assert '<script src="/static/app.js">' in page
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        # Only the links the page builds for the user point elsewhere: nothing is fetched.
        outside = text.replace("https://lichess.org/", "").replace("http://www.w3.org/", "")
        assert "http://" not in outside and "https://" not in outside, name
        assert client.get(f"/static/{name}").status_code == 200


# --------------------------------------------------------------------------- batching


def test_concurrent_submissions_share_a_batch():
    sizes: list[int] = []

    def double(items):
        sizes.append(len(items))
        return [item * 2 for item in items]

    async def scenario():
        batcher = MicroBatcher(double, max_batch=4, max_wait=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(n) for n in range(10)))
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [n * 2 for n in range(10)]
    assert sizes == [4, 4, 2]


def test_batches_go_to_the_model_in_power_of_two_chunks():
    assert [len(chunk) for chunk in power_of_two_chunks(list(range(13)))] == [8, 4, 1]
    assert [list(chunk) for chunk in power_of_two_chunks([0, 1, 2])] == [[0, 1], [2]]
    assert power_of_two_chunks([]) == []


def test_a_batch_waits_only_for_requests_on_their_way():
    sizes: list[int] = []

    def record(items):
        sizes.append(len(items))
        return items

    async def scenario():
        batcher = MicroBatcher(record, max_batch=8, max_wait=1.0)
        batcher.start()
        started = time.monotonic()
        await batcher.submit("alone")
        alone = time.monotonic() - started

        async def late():
            with batcher.coming():
                await asyncio.sleep(0.05)
            return await batcher.submit("late")

        waiting = asyncio.ensure_future(late())
        await asyncio.sleep(0)
        await asyncio.gather(batcher.submit("early"), waiting)
        await batcher.stop()
        return alone

    assert asyncio.run(scenario()) < 0.5
    assert sizes == [1, 2]


def test_a_failed_batch_fails_its_requests_only():
    def picky(items):
        if "bad" in items:
            raise ValueError("bad item")
        return items

    async def scenario():
        batcher = MicroBatcher(picky, max_batch=8, max_wait=0.001)
        batcher.start()
        with pytest.raises(ValueError, match="bad item"):
            await batcher.submit("bad")
        result = await batcher.submit("good")
        await batcher.stop()
        return result

    assert asyncio.run(scenario()) == "good"


# --------------------------------------------------------------------------- a real server


def test_slow_and_broken_clients_do_not_stall_others(tmp_path):
    body = board_png()
    with serve_command("--upload_timeout", "2", log=tmp_path / "serve.log") as url:
        host, port = url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)))
        # Headers promise a whole board; only a few bytes come.
        slow_headers = (
            b"POST /api/read HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        slow.sendall(slow_headers + body[:100])
        # Another leaves halfway through its upload.
        broken = socket.create_connection((host, int(port)))
        broken.sendall(slow_headers + body[:1000])
        broken.close()
        started = time.monotonic()
        for _ in range(5):
            response = httpx.post(f"{url}/api/read", content=body, headers=PNG, timeout=10)
            assert response.status_code == 200
        assert time.monotonic() - started < 2
        answer = _answer(slow)
    assert answer.startswith("HTTP/1.1 408")
    assert '"code":"upload_timeout"' in answer
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _answer(connection: socket.socket) -> str:
    """What the server sends on `connection` until it closes it or its JSON body ends."""
    connection.settimeout(10)
    received = b""
    while not received.endswith(b"}}") and (chunk := connection.recv(4096)):
        received += chunk
    connection.close()
    return received.decode()


# --------------------------------------------------------------------------- exact corners


def _unsure(reading: BoardReading) -> BoardReading:
    return dataclasses.replace(reading, min_square_confidence=0.0)


def test_a_located_board_read_unsure_is_cut_again_at_its_exact_corners():
    page = Image.new("RGB", (420, 400), "white")
    page.paste(Image.open(io.BytesIO(board_png(size=320))), (60, 40))  # squares of 40 px
    buffer = io.BytesIO()
    page.save(buffer, "PNG")
    truth = (60, 40, 380, 360)
    off = [(edge + 12) / side for edge, side in zip(truth, (420, 400) * 2, strict=True)]
    served = dataclasses.replace(
        load_model(str(default_reader())), locate=lambda scenes: np.array([off] * len(scenes))
    )
    (cut,) = served.cut_boards(buffer.getvalue(), "page.png", detect=False)
    assert cut.box == pytest.approx([edge + 12 for edge in truth])
    (reading,) = served.read_batch([BoardInput(cut.crop, cut.margins, None)])
    sure = dataclasses.replace(reading, min_square_confidence=1.0)
    assert served.cut_again([cut], [sure]) == []
    ((place, again),) = served.cut_again([cut], [_unsure(reading)])
    assert place == 0 and again.box == pytest.approx(truth, abs=0.05 * 40)
    assert again.corners is not None and again.located is None  # not cut a third time
    # A board the corner search found is exact already.
    (found,) = served.cut_boards(buffer.getvalue(), "page.png", detect=True)
    assert found.located is None and served.cut_again([found], [_unsure(reading)]) == []


def test_the_api_answers_with_the_board_cut_again(monkeypatch):
    import chessvlm.serve.app
    from chessvlm.serve.app import CutBoard, ServedModel

    other = board_png(FENS[1])

    def cut_again(self, boards, readings):
        (cut,) = self.cut_boards(other, "other", detect=False)
        corners = ((1.0, 2.0), (3.0, 2.0), (3.0, 4.0), (1.0, 4.0))
        return [(0, CutBoard(cut.crop, cut.margins, (1.0, 2.0, 3.0, 4.0), corners))]

    monkeypatch.setattr(ServedModel, "cut_again", cut_again)
    # The shipped reader is sure of a plain board: take it as unsure, as if it were not.
    monkeypatch.setattr(chessvlm.serve.app, "worth_reading_again", lambda reading: True)
    with TestClient(create_app()) as fresh:
        response = fresh.post("/api/read?detect=false", content=board_png(FENS[0]), headers=PNG)
    (board,) = response.json()["boards"]
    assert board["fen"].split()[0] == chess.Board(FENS[1]).board_fen()
    assert board["board_box"] == [1.0, 2.0, 3.0, 4.0] and board["corners"][2] == [3.0, 4.0]
