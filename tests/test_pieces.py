import functools
from pathlib import Path

import numpy as np
import pytest

from chessvlm import pieces
from chessvlm.errors import ChessVLMError
from chessvlm.pieces import (
    KINDS,
    PIECE_SETS,
    PIECE_SYMBOLS,
    available_piece_sets,
    piece_bitmap,
    piece_designs,
    piece_images,
    piece_set_available,
)


def require_art(piece_set: str) -> None:
    """Fail (never skip) when a set's art is missing: CI fetches it first."""
    if not piece_set_available(piece_set):
        pytest.fail(
            f"art of piece set {piece_set!r} ({PIECE_SETS[piece_set].package}) is not in the "
            "art cache: run `chessvlm data art --fetch` first"
        )


@functools.cache
def bitmaps(piece_set: str, size: int) -> dict:
    return {s: piece_bitmap(piece_set, s, size) for s in PIECE_SYMBOLS}


def brightness(bitmap) -> float:
    rgba = np.asarray(bitmap, dtype=np.float64)
    return rgba[..., :3].mean(axis=2)[rgba[..., 3] > 128].mean()


@pytest.mark.parametrize("piece_set", list(PIECE_SETS))
def test_piece_set_has_twelve_distinct_pieces_and_white_is_light(piece_set: str) -> None:
    require_art(piece_set)
    assert sorted(piece_images(piece_set)) == sorted(PIECE_SYMBOLS)
    drawn = bitmaps(piece_set, 32)
    for bitmap in drawn.values():
        assert bitmap.mode == "RGBA" and bitmap.size == (32, 32)
        assert np.count_nonzero(np.asarray(bitmap)[..., 3] > 128) > 50
    assert len({b.tobytes() for b in drawn.values()}) == 12
    # White lighter than black; designs marked with an `exception` get a weaker bound.
    margin = 15 if PIECE_SETS[piece_set].exception else 40
    for white in "KQRBNP":
        assert brightness(drawn[white]) > brightness(drawn[white.lower()]) + margin, white


@pytest.mark.parametrize("piece_set", list(PIECE_SETS))
@pytest.mark.parametrize("size", [12, 23, 64])
def test_bitmap_size_at_odd_square_sizes(piece_set: str, size: int) -> None:
    require_art(piece_set)
    drawn = bitmaps(piece_set, size)
    assert {b.size for b in drawn.values()} == {(size, size)}
    assert all(np.asarray(b)[..., 3].max() > 128 for b in drawn.values())


def test_registry_records_design_kind_source_and_licence() -> None:
    designs = piece_designs()
    assert len(designs) >= 40
    assert PIECE_SETS["wikipedia-png"].design == PIECE_SETS["cburnett"].design
    for name, source in PIECE_SETS.items():
        assert source.kind in KINDS, name
        assert source.design and source.licence and source.format in ("svg", "png"), name
        if source.source == "fetched":
            assert source.version == pieces.ART_PACKAGES[source.package].version, name
        assert "exception" not in name
    assert {s.kind for s in PIECE_SETS.values()} == set(KINDS)
    marked = [n for n, s in PIECE_SETS.items() if s.exception]
    assert marked == sorted(pieces._LOW_CONTRAST, key=list(PIECE_SETS).index)


def test_installed_sets_need_no_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHESSVLM_ART_DIR", str(tmp_path))
    available = available_piece_sets()
    assert "cburnett" in available and "merida" in available and "dejavu-font" in available
    assert "staunty" not in available


def _fresh_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHESSVLM_ART_DIR", str(tmp_path))
    piece_images.cache_clear()


def test_missing_art_names_set_package_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fresh_images(monkeypatch, tmp_path)
    try:
        with pytest.raises(ChessVLMError) as error:
            piece_images("staunty")
    finally:
        piece_images.cache_clear()
    message = str(error.value)
    assert "'staunty'" in message and "fentoimage==0.1.0" in message
    assert "chessvlm data art --fetch" in message and "available_piece_sets" in message


def test_malformed_art_names_set_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh_images(monkeypatch, tmp_path)
    root = tmp_path / pieces.ART_PACKAGES["fentoimage"].folder
    folder = root / "fentoimage/assets/cache" / PIECE_SETS["staunty"].folder
    folder.mkdir(parents=True)
    (root / ".complete").write_text("test\n")
    for stem in ("wK", "wQ", "wR", "wB", "wN", "wP", "bK", "bQ", "bR", "bB", "bN"):
        (folder / f"{stem}.png").write_bytes(b"not a png")
    try:
        with pytest.raises(ChessVLMError, match=r"'staunty'.*bP\.png"):
            piece_images("staunty")  # bP.png is missing
        (folder / "bP.png").write_bytes(b"not a png")
        piece_images.cache_clear()
        with pytest.raises(ChessVLMError, match=r"'staunty'.*'K'.*malformed"):
            piece_images("staunty")
    finally:
        piece_images.cache_clear()


def test_failed_fetch_names_package_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHESSVLM_ART_DIR", str(tmp_path))
    calls = []

    def fake_fetch(pkg):
        calls.append(pkg.name)
        if pkg.name == "pgn2web":
            raise ChessVLMError(f"{pkg.label}: offline")
        root = tmp_path / pkg.folder
        root.mkdir(parents=True)
        (root / ".complete").write_text("x")

    monkeypatch.setattr(pieces, "_fetch_one", fake_fetch)
    monkeypatch.setattr(pieces, "_can_apt_update", lambda: False)
    lines: list[str] = []
    results = pieces.fetch_art(["pgn2web", "fentoimage"], log=lines.append)
    assert calls == ["pgn2web", "fentoimage"]
    assert results["fentoimage"] == "ok" and "offline" in results["pgn2web"]
    assert any("pgn2web" in line and "FAILED" in line for line in lines)
    # Idempotent: a second run fetches nothing again.
    assert pieces.fetch_art(["fentoimage"], log=lines.append) == {"fentoimage": "ok"}
    assert calls == ["pgn2web", "fentoimage"]
