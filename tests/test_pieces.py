import functools
import gzip
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


def test_knights_theme_without_a_piece_or_not_gzip_names_set_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fresh_images(monkeypatch, tmp_path)
    root = tmp_path / pieces.ART_PACKAGES["knights"].folder
    folder = root / "usr/share/knights/themes"
    folder.mkdir(parents=True)
    (root / ".complete").write_text("test\n")
    theme = folder / PIECE_SETS["knights-knights"].folder
    # Every piece but the kings, each a small grey square.
    elements = "".join(
        f'<rect id="{colour}{name}" x="{10 * i}" y="0" width="8" height="8" fill="#888"/>'
        for i, (colour, name) in enumerate(
            (c, n)
            for c in ("White", "Black")
            for n in ("Pawn", "Knight", "Bishop", "Rook", "Queen")
        )
    )
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="20">{elements}</svg>'
    theme.write_bytes(gzip.compress(svg.encode()))
    try:
        with pytest.raises(ChessVLMError, match=r"'knights-knights'.*knights\.svgz.*WhiteKing"):
            piece_images("knights-knights")
        theme.write_bytes(svg.encode())  # not gzip-compressed
        piece_images.cache_clear()
        with pytest.raises(ChessVLMError, match=r"'knights-knights'.*knights\.svgz.*malformed"):
            piece_images("knights-knights")
    finally:
        piece_images.cache_clear()


def test_mesh_set_with_a_missing_or_malformed_model_names_set_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fresh_images(monkeypatch, tmp_path)
    root = tmp_path / pieces.ART_PACKAGES["brutalchess"].folder
    models = root / PIECE_SETS["brutalchess"].folder
    models.mkdir(parents=True)
    (root / ".complete").write_text("test\n")
    triangle = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
    for name in ("king", "queen", "rook", "bishop", "knight"):
        (models / f"{name}.obj").write_text(triangle)
    try:
        with pytest.raises(ChessVLMError, match=r"'brutalchess'.*pawn\.obj"):
            piece_images("brutalchess")  # pawn.obj is missing
        (models / "pawn.obj").write_text("v 0 0 0\nf 1 2 x\n")
        piece_images.cache_clear()
        with pytest.raises(ChessVLMError, match=r"'brutalchess'.*pawn\.obj is malformed.*line 2"):
            piece_images("brutalchess")
        (models / "pawn.obj").write_text(triangle)
        piece_images.cache_clear()
        with pytest.raises(ChessVLMError, match=r"'brutalchess'.*marblehugewhite\.png"):
            piece_images("brutalchess")  # no textures
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


def _silhouettes(piece_set: str) -> np.ndarray:
    """The six white pieces' opaque masks, each cropped to its box and scaled to 32 px."""
    from PIL import Image

    masks = []
    for symbol in "KQRBNP":
        opaque = np.asarray(piece_bitmap(piece_set, symbol, 48))[..., 3] > 128
        rows, columns = np.nonzero(opaque)
        box = opaque[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        scaled = Image.fromarray(box.astype(np.uint8) * 255).resize((32, 32))
        masks.append(np.asarray(scaled) > 127)
    return np.stack(masks)


def test_sets_of_different_designs_do_not_share_silhouettes() -> None:
    # A leave-designs-out split is only as good as the `design` labels: two sets whose pieces
    # have (nearly) the same outlines must be one design. Same-design sets score >= 0.87 on
    # this measure; the closest different designs about 0.91 (classic Staunton shapes).
    for name in PIECE_SETS:
        require_art(name)
    names = list(PIECE_SETS)
    masks = np.stack([_silhouettes(name) for name in names]).reshape(len(names), 6, -1)
    inter = np.einsum("ikp,jkp->ijk", masks.astype(np.float32), masks.astype(np.float32))
    sizes = masks.sum(axis=2)
    iou = (inter / (sizes[:, None, :] + sizes[None, :, :] - inter)).mean(axis=2)
    too_close = [
        (names[i], names[j], round(float(iou[i, j]), 3))
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if iou[i, j] > 0.915 and PIECE_SETS[names[i]].design != PIECE_SETS[names[j]].design
    ]
    assert not too_close, f"same outlines, different `design`: {too_close}"
