import re

import numpy as np
import pytest
from PIL import Image

from chessvlm.meshes import Mesh, MeshError, View, draw_pieces, read_dcm, read_obj, render_mesh

# A unit cube standing on the ground (z from 0 to 1 once read: OBJ's y is up).
CUBE_OBJ = """
v 0 0 0
v 1 0 0
v 1 0 1
v 0 0 1
v 0 1 0
v 1 1 0
v 1 1 1
v 0 1 1
vt 0 0
vt 1 0
vt 1 1
vt 0 1
f 1/1 2/2 3/3 4/4
f 5/1 8/4 7/3 6/2
f 1/1 5/2 6/3 2/4
f 2/1 6/2 7/3 3/4
f 3/1 7/2 8/3 4/4
f -8/1 -4/2 -1/3 -5/4
"""


def box(low: tuple[float, float, float], high: tuple[float, float, float]) -> Mesh:
    """An axis-aligned box (z up), two triangles a face, every corner at uv (0.5, 0.5)."""
    x0, y0, z0 = low
    x1, y1, z1 = high
    corners = np.array(
        [[x, y, z] for z in (z0, z1) for y in (y0, y1) for x in (x0, x1)], dtype=float
    )
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    triangles = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    return Mesh(corners, triangles, np.full((len(triangles), 3, 2), 0.5))


def flat(colour: tuple[float, float, float]) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=float), (4, 4, 3))


def opaque(image: Image.Image) -> np.ndarray:
    return np.asarray(image)[..., 3] > 128


def test_obj_polygons_become_triangles_with_their_texture_corners_and_z_up() -> None:
    mesh = read_obj(CUBE_OBJ)
    assert mesh.triangles.shape == (12, 3) and mesh.corner_uvs.shape == (12, 3, 2)
    assert mesh.vertices[:, 2].min() == 0 and mesh.vertices[:, 2].max() == 1  # OBJ y is up
    # Negative indices count back from the last vertex: the last face is the first's twin.
    last = mesh.vertices[mesh.triangles[-1]]
    assert (last[:, 0] == 0).all()
    assert set(map(tuple, mesh.corner_uvs[0])) == {(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("v 0 0 0\nv 1 0 x\nf 1 2 1\n", r"line 2: cannot read 'v 1 0 x'"),
        ("v 0 0 0\n", "no vertices or no faces"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "outside the 3 entries"),
    ],
)
def test_bad_obj_says_what_and_where(text: str, message: str) -> None:
    with pytest.raises(MeshError, match=message):
        read_obj(text)


def dcm_text(primitives: list[tuple[str, list[int]]], vertices: int = 4) -> str:
    points = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]][:vertices]
    numbers = [x for p in points for x in p] + [0, 0, 1] * vertices + [0.5, 0.5] * vertices
    lines = ["DCM 0100", str(vertices), *map(str, numbers), str(len(primitives))]
    for kind, indices in primitives:
        lines += [kind, str(len(indices)), *map(str, indices)]
    return "\n".join(lines) + "\n"


def test_dcm_triangles_and_strips_read_alike() -> None:
    mesh = read_dcm(dcm_text([("TRIANGLES", [0, 1, 2]), ("STRIP", [0, 1, 3, 2])]))
    # The strip's second triangle is turned back, so it winds as the first.
    assert mesh.triangles.tolist() == [[0, 1, 2], [0, 1, 3], [3, 1, 2]]
    assert mesh.vertices.shape == (4, 3) and mesh.corner_uvs.shape == (3, 3, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("OBJ 0100\n", "not a DCM 0100 model"),
        (dcm_text([("TRIANGLES", [0, 1, 2])])[:-8], "truncated or malformed"),
        (dcm_text([("FANS", [0, 1, 2])]), "primitive 'FANS'"),
        (dcm_text([("TRIANGLES", [0, 1, 7])]), "outside the 4 entries"),
    ],
)
def test_bad_dcm_says_what(text: str, message: str) -> None:
    with pytest.raises(MeshError, match=message):
        read_dcm(text)


def test_a_box_stands_centred_at_the_bottom_of_its_square() -> None:
    drawn = render_mesh(box((0, 0, 0), (1, 1, 2)), flat((0.8, 0.8, 0.8)), View(), 20.0, 64)
    rows, columns = np.nonzero(opaque(drawn))
    assert rows.max() == pytest.approx(64 * 0.97, abs=1.5)  # its foot, above the edge
    assert (columns.min() + columns.max()) / 2 == pytest.approx(31.5, abs=1)
    # Seen from 20 degrees above: 2 units of height and a sliver of the top.
    assert rows.max() - rows.min() == pytest.approx(20 * (2 * np.cos(0.349) + np.sin(0.349)), abs=2)


def test_the_lit_side_is_brighter_and_the_texture_colours_the_surface() -> None:
    # Turned 45 degrees, two faces show; the light comes from the upper left.
    drawn = render_mesh(box((0, 0, 0), (1, 1, 1)), flat((0.2, 0.4, 0.8)), View(10, 45), 30.0, 64)
    rgba = np.asarray(drawn).astype(float)
    rows = np.nonzero(opaque(drawn))[0]
    middle_row = (rows.min() + rows.max()) // 2
    row = rgba[middle_row]
    lit = row[opaque(drawn)[middle_row]]
    left, right = lit[: len(lit) // 3, :3].mean(), lit[-len(lit) // 3 :, :3].mean()
    assert left > right
    assert (lit[:, 2] > lit[:, 1]).all() and (lit[:, 1] > lit[:, 0]).all()  # blue, not grey


def test_the_nearer_surface_hides_the_one_behind() -> None:
    near = box((-0.5, -2.0, 0), (0.5, -1.0, 1))  # towards the viewer (-y)
    far = box((-1.0, 1.0, 0), (1.0, 2.0, 1.5))
    both = Mesh(
        np.vstack([near.vertices, far.vertices]),
        np.vstack([near.triangles, far.triangles + len(near.vertices)]),
        np.concatenate([np.full((12, 3, 2), 0.25), np.full((12, 3, 2), 0.75)]),
    )
    texture = np.zeros((2, 2, 3))
    texture[:, 0] = (1.0, 0.0, 0.0)  # u < 0.5: the near box red
    texture[:, 1] = (0.0, 0.0, 1.0)  # u >= 0.5: the far box blue
    drawn = np.asarray(render_mesh(both, texture, View(0, 0), 10.0, 64)).astype(int)
    # Seen level, 10 px a unit: the near box covers rows 52-62 and columns 27-37, the far one
    # rows 47-62 and columns 22-42.
    centre = drawn[56, 32]
    assert centre[3] == 255 and centre[0] > centre[2]
    for row, column in ((50, 32), (56, 24)):  # above and beside the near box: the far one
        assert drawn[row, column][2] > drawn[row, column][0]


def test_a_set_shares_one_scale_and_gets_both_colours() -> None:
    meshes = {"K": box((0, 0, 0), (1, 1, 4)), "P": box((0, 0, 0), (1, 1, 2))}
    textures = {"white": flat((0.9, 0.9, 0.9)), "black": flat((0.1, 0.1, 0.1))}
    drawn = draw_pieces(meshes, textures, View(0, 0), 64)
    assert sorted(drawn) == ["K", "P", "k", "p"]
    heights = {s: np.ptp(np.nonzero(opaque(image))[0]) + 1 for s, image in drawn.items()}
    assert heights["K"] == pytest.approx(64 * 0.9, abs=1.5)
    assert heights["P"] == pytest.approx(heights["K"] / 2, abs=1.5)
    lightness = {s: np.asarray(i)[opaque(i)][:, :3].mean() for s, i in drawn.items()}
    assert lightness["K"] > lightness["k"] + 100 and lightness["P"] > lightness["p"] + 100


def test_a_model_without_texture_coordinates_takes_the_texture_s_mean_colour() -> None:
    lines = [line for line in CUBE_OBJ.splitlines() if not line.startswith("vt")]
    plain = read_obj(re.sub(r"/\d+", "", "\n".join(lines)))  # faces of vertices alone
    assert plain.corner_uvs is None
    texture = np.zeros((2, 2, 3))
    texture[:, 0] = (1.0, 0.0, 0.0)
    texture[:, 1] = (0.0, 0.0, 1.0)  # mean: purple
    lit = np.asarray(render_mesh(plain, texture, View(), 20.0, 64)).astype(int)
    colours = lit[lit[..., 3] == 255][:, :3]
    assert len(colours) and (np.abs(colours[:, 0] - colours[:, 2]) <= 1).all()
    assert (colours[:, 1] < colours[:, 0]).all()
