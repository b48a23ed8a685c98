import numpy as np
import pytest

from chessvlm.pieces import PIECE_SETS, PIECE_SYMBOLS, piece_bitmap, piece_images


@pytest.mark.parametrize("piece_set", list(PIECE_SETS))
def test_piece_set_has_twelve_distinct_pieces_and_white_is_light(piece_set: str) -> None:
    assert sorted(piece_images(piece_set)) == sorted(PIECE_SYMBOLS)
    bitmaps = {s: piece_bitmap(piece_set, s, 32) for s in PIECE_SYMBOLS}
    for bitmap in bitmaps.values():
        assert bitmap.mode == "RGBA" and bitmap.size == (32, 32)
        assert np.count_nonzero(np.asarray(bitmap)[..., 3] > 128) > 50
    assert len({b.tobytes() for b in bitmaps.values()}) == 12

    def brightness(symbol: str) -> float:
        rgba = np.asarray(bitmaps[symbol], dtype=np.float64)
        return rgba[..., :3].mean(axis=2)[rgba[..., 3] > 128].mean()

    for white in "KQRBNP":
        assert brightness(white) > brightness(white.lower()) + 40
