"""The page in a real browser: Debian's headless chromium, driven by Selenium through
chromium-driver, against `chessvlm serve` started as a user would.

The browser must be installed (`.ci/run` installs it): without it this test fails, it does
not skip. It also takes the README's screenshot: set CHESSVLM_SCREENSHOT to a PNG path to
keep it (`docs/serve.png` is made that way).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import chess
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serve_fixtures import FENS, board_png, serve_command

BROWSER = "chromium"
DRIVER = "chromedriver"
# A board as users paste them: a frame, coordinates outside, black at the bottom.
LOOK = {
    "margin": (40, 30, 40, 30),
    "coordinates": True,
    "coordinate_place": "outside",
    "frame": "wood",
    "theme": "green",
    "flipped": True,
}
FEN = FENS[1]


def _browser() -> webdriver.Chrome:
    browser, driver = shutil.which(BROWSER), shutil.which(DRIVER)
    if browser is None or driver is None:
        pytest.fail(
            f"the browser test needs Debian's {BROWSER} and {BROWSER}-driver "
            f"(apt-get install {BROWSER} {BROWSER}-driver; .ci/run does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1300,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve")
    with serve_command(log=logs / "serve.log") as url:
        browser = _browser()
        try:
            browser.get(url)
            yield browser
        finally:
            browser.quit()


def _fen(page) -> str:
    fields = page.find_elements(By.CSS_SELECTOR, ".board .fen")
    return fields[0].get_attribute("value") if fields else ""


def _fen_shown(page, previous: str = "") -> str:
    """The FEN the page shows once it shows one other than `previous` (each reading
    replaces the board's elements, so they are looked up anew each time)."""
    wait = WebDriverWait(page, 30, ignored_exceptions=(StaleElementReferenceException,))
    try:
        wait.until(lambda _: _fen(page) not in ("", previous))
    except TimeoutException:
        pytest.fail(f"the page still shows {_fen(page)!r}: {_message(page)}")
    return _fen(page)


def _message(page) -> str:
    return page.find_element(By.ID, "message").text


def test_an_uploaded_board_is_read_drawn_and_outlined(page, tmp_path):
    image = tmp_path / "board.png"
    image.write_bytes(board_png(FEN, 400, **LOOK))
    page.find_element(By.ID, "file").send_keys(str(image))
    fen = _fen_shown(page)
    assert fen == chess.Board(FEN).fen().replace(" 4 4", " 0 1")
    drawing = page.find_element(By.CSS_SELECTOR, ".board .drawing svg")
    assert len(drawing.find_elements(By.CSS_SELECTOR, "rect.square")) == 64
    assert len(drawing.find_elements(By.CSS_SELECTOR, "use")) == len(chess.Board(FEN).piece_map())
    # Drawn as the image shows it: black at the bottom, so h1 is the top-left square.
    corners = {
        name: drawing.find_element(By.CSS_SELECTOR, f"rect.square.{name}") for name in ("h1", "a8")
    }
    h1, a8 = ((float(c.get_attribute("x")), float(c.get_attribute("y"))) for c in corners.values())
    assert h1[0] < a8[0] and h1[1] < a8[1]
    (box,) = page.find_elements(By.CSS_SELECTOR, "#boxes rect")
    assert 0 < float(box.get_attribute("x")) < 120 and float(box.get_attribute("width")) > 350
    assert page.find_element(By.ID, "photo").get_attribute("naturalWidth") == "546"
    analysis = page.find_element(By.CSS_SELECTOR, ".analysis").get_attribute("href")
    assert analysis == "https://lichess.org/analysis/standard/" + fen.replace(" ", "_")
    _screenshot(page, tmp_path)


def test_controls_update_the_fen_and_the_links(page):
    fen = _fen_shown(page)
    page.find_element(By.CSS_SELECTOR, ".to-move input[value='b']").click()
    fen = _fen_shown(page, fen)
    assert fen.split()[1] == "b"
    page.find_element(By.CSS_SELECTOR, ".castling input[value='K']").click()
    fen = _fen_shown(page, fen)
    assert fen.split()[2] == "Qkq"
    page.find_element(By.CSS_SELECTOR, ".flip").click()
    flipped = _fen_shown(page, fen)
    # Half a turn: rank 8 read backwards is the new rank 1.
    assert flipped.split()[0].split("/")[7] == fen.split()[0].split("/")[0][::-1]
    editor = page.find_element(By.CSS_SELECTOR, ".editor").get_attribute("href")
    assert editor == "https://lichess.org/editor/" + flipped.replace(" ", "_")


@pytest.mark.parametrize(("event", "fen"), [("paste", chess.STARTING_FEN), ("drop", FENS[1])])
def test_pasted_and_dropped_images_are_read(page, event, fen):
    png = base64.b64encode(board_png(fen, 256)).decode()
    page.execute_script("document.getElementById('boards').replaceChildren()")
    page.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "board.png", {type: "image/png"}));
        const target = arguments[1] === "paste" ? document : document.getElementById("drop");
        const event = arguments[1] === "paste"
            ? new ClipboardEvent("paste", {clipboardData: data, bubbles: true})
            : new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true});
        target.dispatchEvent(event);
        """,
        png,
        event,
    )
    assert _fen_shown(page).split()[0] == chess.Board(fen).board_fen()


def test_a_bad_upload_shows_the_servers_error(page, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    page.find_element(By.ID, "file").send_keys(str(text))
    WebDriverWait(page, 30).until(lambda _: "Cannot read" in _message(page))
    assert "not an image file" in _message(page)


def _screenshot(page, tmp_path: Path) -> None:
    path = Path(os.environ.get("CHESSVLM_SCREENSHOT") or tmp_path / "page.png")
    page.set_window_size(1300, 1000)
    page.save_screenshot(str(path))
    with Image.open(path) as shot:
        shot = shot.convert("RGB")
    assert shot.size[0] >= 1000 and len(shot.getcolors(2**24)) > 100
    # 256 colours keep the README's copy small.
    shot.quantize(256).save(path, optimize=True)
