"""Pieces drawn here from the 3D models that chess games ship.

Some packages carry their pieces as meshes, not pictures: Brutal Chess as Wavefront OBJ files,
DreamChess in its own text format (DCM). `read_obj` and `read_dcm` parse them into a `Mesh`;
`render_mesh` draws one as a board program would show it, seen a little from above, with a
texture and a light from the upper left; `draw_pieces` draws a whole set at one scale, each
piece standing at the bottom of its square. `chessvlm.pieces` turns the result into piece
sets, so these designs join the data like any other.

The drawing is a small z-buffer rasteriser in numpy, every triangle at once: each triangle's
candidate pixels are listed, their barycentric coordinates tested, and the nearest surface
kept per pixel. Drawn at twice the size and scaled down, the edges are smooth.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from PIL import Image


class MeshError(ValueError):
    """A model file that cannot be read as a mesh (the message says what is wrong)."""


@dataclasses.dataclass(frozen=True)
class Mesh:
    """Triangles in model space: `vertices` (n, 3) with the up axis last, `triangles` (m, 3)
    indices into them, and `corner_uvs` (m, 3, 2) texture coordinates of each triangle's
    corners (None: untextured)."""

    vertices: np.ndarray
    triangles: np.ndarray
    corner_uvs: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class View:
    """How a set is seen: `elevation` degrees above the horizon, `azimuth` degrees the models
    are turned about their up axis (so a knight shows its profile), and the light's
    direction as (right, up, towards the viewer)."""

    elevation: float = 20.0
    azimuth: float = 0.0
    light: tuple[float, float, float] = (-0.5, 0.7, 0.6)


def read_obj(text: str) -> Mesh:
    """A Wavefront OBJ model (vertices `v`, texture coordinates `vt`, polygon faces `f`,
    negative indices allowed; y up, as OBJ files are written) as a `Mesh`."""
    vertices: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[tuple[int, int | None]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if fields[0] == "v":
                vertices.append([float(x) for x in fields[1:4]])
            elif fields[0] == "vt":
                uvs.append([float(x) for x in fields[1:3]])
            elif fields[0] == "f":
                faces.append([_obj_corner(f, len(vertices), len(uvs)) for f in fields[1:]])
        except (ValueError, IndexError):
            raise MeshError(f"line {number}: cannot read {line.strip()!r}") from None
    if not vertices or not faces:
        raise MeshError("no vertices or no faces")
    corners = [(face[0], a, b) for face in faces for a, b in itertools.pairwise(face[1:])]
    triangles = np.array([[c[0] for c in corner] for corner in corners])
    _check_indices(triangles, len(vertices))
    corner_uvs = None
    if uvs and all(c[1] is not None for corner in corners for c in corner):
        uv_index = np.array([[c[1] for c in corner] for corner in corners])
        _check_indices(uv_index, len(uvs))
        corner_uvs = np.asarray(uvs)[uv_index]
    xyz = np.asarray(vertices)
    return Mesh(xyz[:, [0, 2, 1]] * [1, -1, 1], triangles, corner_uvs)  # y up -> z up


def _obj_corner(field: str, n_vertices: int, n_uvs: int) -> tuple[int, int | None]:
    """`v`, `v/vt`, `v//vn` or `v/vt/vn` -> 0-based (vertex, uv or None) indices."""
    parts = field.split("/")
    vertex = int(parts[0])
    uv = int(parts[1]) if len(parts) > 1 and parts[1] else None
    vertex = vertex - 1 if vertex > 0 else n_vertices + vertex
    if uv is not None:
        uv = uv - 1 if uv > 0 else n_uvs + uv
    return vertex, uv


def read_dcm(text: str) -> Mesh:
    """A DreamChess model (`DCM 0100`: the vertex count, then the vertices, normals and
    texture coordinates one number a line, then the count of primitives, each `TRIANGLES`
    or `STRIP`, its index count and indices; z up) as a `Mesh`."""
    lines = text.split()
    if not lines or " ".join(lines[:2]) != "DCM 0100":
        raise MeshError("not a DCM 0100 model (its first line must be 'DCM 0100')")
    try:
        count = int(lines[2])
        numbers = np.array(lines[3 : 3 + 8 * count], dtype=float)
        vertices = numbers[: 3 * count].reshape(count, 3)
        uvs = numbers[6 * count :].reshape(count, 2)
        at = 3 + 8 * count
        triangles: list[tuple[int, int, int]] = []
        for _ in range(int(lines[at])):
            kind, n = lines[at + 1], int(lines[at + 2])
            indices = [int(i) for i in lines[at + 3 : at + 3 + n]]
            if len(indices) != n or kind not in ("TRIANGLES", "STRIP"):
                raise ValueError(f"primitive {kind!r} of {n} indices")
            triangles.extend(_strip_triangles(indices) if kind == "STRIP" else _triples(indices))
            at += 2 + n
    except (ValueError, IndexError) as error:
        raise MeshError(f"truncated or malformed DCM model ({error})") from None
    if not triangles:
        raise MeshError("no triangles")
    index = np.array(triangles)
    _check_indices(index, count)
    return Mesh(vertices, index, uvs[index])


def _triples(indices: list[int]) -> list[tuple[int, int, int]]:
    return [tuple(indices[i : i + 3]) for i in range(0, len(indices) - 2, 3)]  # type: ignore[misc]


def _strip_triangles(indices: list[int]) -> list[tuple[int, int, int]]:
    """A triangle strip's triangles, every other one turned back so all wind alike."""
    return [
        (indices[i], indices[i + 1], indices[i + 2])
        if i % 2 == 0
        else (indices[i + 1], indices[i], indices[i + 2])
        for i in range(len(indices) - 2)
    ]


def _check_indices(index: np.ndarray, count: int) -> None:
    if index.size and (index.min() < 0 or index.max() >= count):
        raise MeshError(f"an index points outside the {count} entries it indexes")


def _turn(points: np.ndarray, view: View) -> np.ndarray:
    """Model space (z up) -> view space: x right, y up on the screen, z towards the viewer."""
    azimuth, elevation = math.radians(view.azimuth), math.radians(view.elevation)
    ca, sa, ce, se = math.cos(azimuth), math.sin(azimuth), math.cos(elevation), math.sin(elevation)
    x = points[..., 0] * ca - points[..., 1] * sa
    depth = points[..., 0] * sa + points[..., 1] * ca  # away from the viewer, level
    up = points[..., 2]
    return np.stack([x, up * ce + depth * se, -depth * ce + up * se], axis=-1)


def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted normals of the faces around each vertex. Which way they point follows
    the file's winding; `render_mesh` lights both sides, so only their agreement matters."""
    corners = vertices[triangles]
    faces = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(normals, triangles[:, corner], faces)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class _Surface:
    """What the rasteriser found at each covered pixel: its flat index, the triangle, and the
    barycentric weights of the triangle's corners there."""

    pixels: np.ndarray
    triangles: np.ndarray
    weights: np.ndarray


def _rasterise(screen: np.ndarray, depth: np.ndarray, size: tuple[int, int]) -> _Surface:
    """The nearest triangle at each pixel centre: `screen` (m, 3, 2) corners in pixels,
    `depth` (m, 3) towards the viewer, `size` (width, height)."""
    width, height = size
    low = np.clip(np.floor(screen.min(axis=1) - 0.5), 0, [width - 1, height - 1]).astype(int)
    high = np.clip(np.ceil(screen.max(axis=1) - 0.5), 0, [width - 1, height - 1]).astype(int)
    spans = high - low + 1
    counts = spans[:, 0] * spans[:, 1]
    triangle = np.repeat(np.arange(len(screen)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    column = low[triangle, 0] + offset % spans[triangle, 0]
    row = low[triangle, 1] + offset // spans[triangle, 0]
    a, b, c = (screen[triangle, i] for i in range(3))
    point = np.stack([column + 0.5, row + 0.5], axis=1)
    area = _cross(b - a, c - a)
    usable = np.abs(area) > 1e-9
    area = np.where(usable, area, 1.0)
    weights = (
        np.stack(
            [_cross(c - b, point - b), _cross(a - c, point - c), _cross(b - a, point - a)], axis=1
        )
        / area[:, None]
    )
    inside = usable & (weights >= -1e-6).all(axis=1)
    triangle, weights = triangle[inside], weights[inside]
    pixel = row[inside] * width + column[inside]
    nearness = (weights * depth[triangle]).sum(axis=1)
    order = np.lexsort((-nearness, pixel))  # per pixel, the nearest first
    pixel, first = np.unique(pixel[order], return_index=True)
    return _Surface(pixel, triangle[order][first], weights[order][first])


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def render_mesh(
    mesh: Mesh,
    texture: np.ndarray,
    view: View,
    scale: float,
    side: int,
    foot_gap: float = 0.03,
) -> Image.Image:
    """`mesh` drawn on a transparent `side` px square (RGBA): `scale` pixels a model unit,
    standing centred `foot_gap` of the side above the bottom edge. `texture` (h, w, 3) in
    0-1 colours the surface by its texture coordinates (its mean colour where the mesh has
    none); the light is Lambert's with a soft highlight."""
    turned = _turn(mesh.vertices, view)
    normals = _turn(_vertex_normals(mesh.vertices, mesh.triangles), view)
    x_mid = (turned[:, 0].min() + turned[:, 0].max()) / 2
    screen_x = side / 2 + (turned[:, 0] - x_mid) * scale
    screen_y = side * (1 - foot_gap) - (turned[:, 1] - turned[:, 1].min()) * scale
    corners = np.stack([screen_x, screen_y], axis=1)[mesh.triangles]
    surface = _rasterise(corners, turned[mesh.triangles, 2], (side, side))
    weights = surface.weights[:, :, None]
    normal = (normals[mesh.triangles[surface.triangles]] * weights).sum(axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    normal *= np.where(normal[:, 2:] < 0, -1.0, 1.0)  # a face seen from inside: its front
    colour = _surface_colour(mesh, texture, surface)
    light = np.asarray(view.light, dtype=float)
    light /= np.linalg.norm(light)
    diffuse = np.clip(normal @ light, 0.0, 1.0)
    halfway = light + np.array([0.0, 0.0, 1.0])  # between the light and the viewer
    halfway /= np.linalg.norm(halfway)
    shine = np.clip(normal @ halfway, 0.0, 1.0) ** 24 * 0.35
    shaded = colour * (0.35 + 0.75 * diffuse)[:, None] + shine[:, None]
    rgba = np.zeros((side * side, 4))
    rgba[surface.pixels, :3] = np.clip(shaded, 0.0, 1.0)
    rgba[surface.pixels, 3] = 1.0
    return Image.fromarray(np.round(rgba * 255).astype(np.uint8).reshape(side, side, 4), "RGBA")


def _surface_colour(mesh: Mesh, texture: np.ndarray, surface: _Surface) -> np.ndarray:
    if mesh.corner_uvs is None:
        return np.broadcast_to(texture.reshape(-1, 3).mean(axis=0), (len(surface.pixels), 3))
    uv = (mesh.corner_uvs[surface.triangles] * surface.weights[:, :, None]).sum(axis=1)
    height, width = texture.shape[:2]
    column = np.floor((uv[:, 0] % 1.0) * width).astype(int).clip(0, width - 1)
    row = np.floor((1.0 - uv[:, 1] % 1.0) * height).astype(int).clip(0, height - 1)
    return texture[row, column]


def draw_pieces(
    meshes: dict[str, Mesh],
    textures: dict[str, np.ndarray],
    view: View,
    side: int,
    fill: float = 0.9,
    supersample: int = 2,
) -> dict[str, Image.Image]:
    """Every piece of a set on its own transparent `side` px square: `meshes` by piece letter
    (`K` ... `P`), drawn once per colour with `textures["white"]` and `textures["black"]`
    (keys `K`... and `k`...). One scale for all, so that the tallest piece on screen fills
    `fill` of the side, as the set's pieces stand beside each other on a board."""
    extents = []
    for mesh in meshes.values():
        turned = _turn(mesh.vertices, view)
        extents.append(np.ptp(turned[:, :2], axis=0).max())
    big = side * supersample
    scale = big * fill / max(extents)
    pieces = {}
    for letter, mesh in meshes.items():
        for symbol, colour in ((letter.upper(), "white"), (letter.lower(), "black")):
            drawn = render_mesh(mesh, textures[colour], view, scale, big)
            pieces[symbol] = drawn.resize((side, side), Image.Resampling.LANCZOS)
    return pieces
