"""Procedural in-context matting scenes: "this category" in a clutter of others, with the exact alpha.

A scene is one object (sometimes two) of a chosen *category* on a textured, cluttered background, with one to
three *distractor* objects of other categories. The ground truth is the visible coverage of the chosen category's
objects (occlusion by a distractor drawn above them is taken out), so a reference and a target of the same
category pose IconMatting's question: matte "this thing" and nothing else.

Categories differ in shape, colours and texture, and together cover what makes matting hard:

========= =====================================================================
star      five-pointed, soft edges of varying width, striped orange/red
ring      a hole that shows the background, dotted blue
furball   a body with dozens of thin strands (sub-pixel at low resolution)
bubble    semi-transparent interior (alpha 0.55-0.75) with an opaque rim
leaf      pointed leaf with a thin stem and veins, green
gear      teeth and four small holes, checkered yellow-grey
cloud     soft fuzzy union of blobs, partly transparent, white-grey
cross     plus sign with concentric pink/magenta bands
========= =====================================================================

Geometry lives in coordinates normalised by the image's shorter side (``u`` to the right, ``v`` down; a square
image spans ``[0, 1]^2``), so a scene renders at any size; only anti-aliasing depends on the pixel size. Non-square
images (``size=(height, width)``) are a wider or taller view with the same object sizes. Everything is a pure function of
``(category, seed, size)`` through :class:`numpy.random.Generator` (PCG64): the same call gives the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CATEGORIES = ("star", "ring", "furball", "bubble", "leaf", "gear", "cloud", "cross")

Array = np.ndarray


@dataclass(frozen=True)
class Scene:
    """One rendered scene.

    Attributes:
        image: ``[H, W, 3]`` float32 RGB in [0, 1].
        alpha: ``[H, W]`` float32 in [0, 1]: the visible coverage of ``category``'s objects.
        category: the category the alpha belongs to.
        distractors: categories of the other objects in the image.
    """

    image: Array
    alpha: Array
    category: str
    distractors: tuple[str, ...]


@dataclass(frozen=True)
class _Placement:
    """Where an object sits: centre ``(u, v)``, radius (fraction of the image side), rotation (radians)."""

    u: float
    v: float
    radius: float
    angle: float


@dataclass(frozen=True)
class _Canvas:
    """Pixel-centre coordinates of an ``H x W`` image in units of its shorter side, the pixel size, and the
    extent ``(W, H) / min(H, W)`` of the image in those units."""

    u: Array
    v: Array
    pixel: float
    extent: tuple[float, float]


def render_scene(category: str, seed: int, size: int | tuple[int, int] = 128, reference: bool = False) -> Scene:
    """Render the scene ``seed`` of ``category`` at ``size x size`` (or ``size = (height, width)``) pixels.

    Args:
        category: one of :data:`CATEGORIES`.
        seed: any non-negative integer; the scene (layout, colours, clutter) is a pure function of it.
        size: image side in pixels, or ``(height, width)`` (each >= 32); the same seed at another size of the
            same shape is the same scene, resampled.
        reference: a reference scene (one larger object, one distractor), so a mask of it keeps RoI tokens.

    Returns:
        A :class:`Scene`.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}.")
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 32:
        raise ValueError(f"scene size must be at least 32 px per side, got {size}.")
    rng = np.random.default_rng([seed, CATEGORIES.index(category), 1 if reference else 0])
    canvas = _canvas(height, width)
    image = _background(canvas, rng)
    others = [name for name in CATEGORIES if name != category]
    distractors = tuple(str(name) for name in rng.choice(others, size=1 if reference else int(rng.integers(1, 4)), replace=False))
    copies = 1 if reference or rng.random() > 0.2 else 2
    layers = _layout(category, copies, distractors, reference, canvas.extent, rng)
    alpha = np.zeros((height, width), np.float32)
    for name, where, texture_seed in layers:
        coverage, colour = _draw(name, where, canvas, np.random.default_rng(texture_seed))
        image = image * (1 - coverage[..., None]) + colour * coverage[..., None]
        alpha = alpha * (1 - coverage)
        if name == category:
            alpha = alpha + coverage
    return Scene(np.clip(image, 0, 1).astype(np.float32), np.clip(alpha, 0, 1).astype(np.float32), category, distractors)


def _canvas(height: int, width: int) -> _Canvas:
    short = min(height, width)
    columns = (np.arange(width, dtype=np.float32) + 0.5) / short
    rows = (np.arange(height, dtype=np.float32) + 0.5) / short
    v, u = np.meshgrid(rows, columns, indexing="ij")
    return _Canvas(u, v, 1.0 / short, (width / short, height / short))


def _layout(
    category: str,
    copies: int,
    distractors: tuple[str, ...],
    reference: bool,
    extent: tuple[float, float],
    rng: np.random.Generator,
) -> list[tuple[str, _Placement, int]]:
    """Objects in drawing order (later ones on top): ``(category, placement, texture seed)``."""
    placed: list[_Placement] = []
    objects = []
    low, high = ((0.3, 0.38) if reference else (0.17, 0.28)) if copies == 1 else (0.14, 0.2)
    for _ in range(copies):
        objects.append((category, _place(placed, low, high, extent, rng)))
    for name in distractors:
        objects.append((str(name), _place(placed, 0.1, 0.2, extent, rng)))
    order = rng.permutation(len(objects))
    return [(objects[i][0], objects[i][1], int(rng.integers(2**31))) for i in order]


def _place(
    placed: list[_Placement], low: float, high: float, extent: tuple[float, float], rng: np.random.Generator
) -> _Placement:
    """A placement inside the image overlapping earlier ones little (best of 40 tries); appended to ``placed``."""
    best, best_gap = None, -math.inf
    for _ in range(40):
        radius = float(rng.uniform(low, high))
        margin = radius * 0.9
        u, v = (float(x) for x in rng.uniform(margin, [extent[0] - margin, extent[1] - margin]))
        gap = min((math.hypot(u - p.u, v - p.v) - 0.8 * (radius + p.radius) for p in placed), default=1.0)
        if gap > best_gap:
            best, best_gap = _Placement(u, v, radius, float(rng.uniform(0, 2 * math.pi))), gap
        if gap > 0:
            break
    placed.append(best)
    return best


# ----------------------------------------------------------------------------------------------- background


def _background(canvas: _Canvas, rng: np.random.Generator) -> Array:
    """A two-colour gradient + low-frequency colour noise + fine grain + flat clutter shapes: ``[S, S, 3]``."""
    first, second = _random_colour(rng), _random_colour(rng)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * canvas.u + np.sin(direction) * canvas.v)[..., None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    image = first * (1 - ramp) + second * ramp
    image = image + 0.18 * _value_noise(canvas, int(rng.integers(3, 8)), 3, rng)
    image = image + 0.04 * _value_noise(canvas, 40, 3, rng)
    for _ in range(int(rng.integers(3, 9))):
        coverage = _clutter_shape(canvas, rng)
        image = image * (1 - coverage[..., None]) + _random_colour(rng) * coverage[..., None]
    return np.clip(image, 0, 1)


def _random_colour(rng: np.random.Generator) -> Array:
    grey = rng.uniform(0.2, 0.8)
    return np.clip(grey + rng.uniform(-0.25, 0.25, size=3), 0, 1).astype(np.float32)


def _value_noise(canvas: _Canvas, cells: int, channels: int, rng: np.random.Generator) -> Array:
    """Smooth noise in [-0.5, 0.5]: a ``cells x cells`` random lattice, bicubic-like (smoothstep) interpolation."""
    lattice = rng.uniform(-0.5, 0.5, size=(cells + 1, cells + 1, channels)).astype(np.float32)
    x, y = canvas.u / canvas.extent[0] * cells, canvas.v / canvas.extent[1] * cells
    x0, y0 = np.minimum(x.astype(int), cells - 1), np.minimum(y.astype(int), cells - 1)
    fx, fy = _smoothstep(x - x0)[..., None], _smoothstep(y - y0)[..., None]
    top = lattice[y0, x0] * (1 - fx) + lattice[y0, x0 + 1] * fx
    bottom = lattice[y0 + 1, x0] * (1 - fx) + lattice[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _smoothstep(t: Array) -> Array:
    return t * t * (3 - 2 * t)


def _clutter_shape(canvas: _Canvas, rng: np.random.Generator) -> Array:
    """A flat, half-transparent rectangle, disc or bar somewhere in the image: coverage ``[S, S]``."""
    u, v = rng.uniform(0, 1, size=2) * canvas.extent
    opacity = rng.uniform(0.3, 0.9)
    kind = rng.integers(3)
    du, dv = canvas.u - u, canvas.v - v
    if kind == 0:
        half = rng.uniform(0.03, 0.15, size=2)
        distance = np.maximum(np.abs(du) - half[0], np.abs(dv) - half[1])
    elif kind == 1:
        distance = np.hypot(du, dv) - rng.uniform(0.02, 0.1)
    else:
        theta = rng.uniform(0, math.pi)
        distance = np.abs(np.sin(theta) * du - np.cos(theta) * dv) - rng.uniform(0.003, 0.015)
        distance = np.maximum(distance, np.abs(np.cos(theta) * du + np.sin(theta) * dv) - rng.uniform(0.1, 0.4))
    return opacity * _edge(distance, canvas.pixel, canvas.pixel)


def _edge(distance: Array, softness: float, pixel: float) -> Array:
    """Coverage of a signed distance (negative inside, normalised units) with an edge ``softness`` wide."""
    return np.clip(0.5 - distance / max(softness, pixel), 0, 1).astype(np.float32)


def _line(distance: Array, width: float, pixel: float) -> Array:
    """Coverage of a line of ``width`` at ``distance`` from its axis; below a pixel wide it fades, never vanishes."""
    width_px, distance_px = width / pixel, distance / pixel
    return (min(width_px, 1.0) * np.clip(max(width_px, 1.0) / 2 + 0.5 - distance_px, 0, 1)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- objects


def _draw(category: str, where: _Placement, canvas: _Canvas, rng: np.random.Generator) -> tuple[Array, Array]:
    """Coverage ``[S, S]`` and colour ``[S, S, 3]`` of one object."""
    cos, sin = math.cos(where.angle), math.sin(where.angle)
    du, dv = canvas.u - where.u, canvas.v - where.v
    local = _Local((cos * du + sin * dv) / where.radius, (-sin * du + cos * dv) / where.radius, where.radius, canvas.pixel)
    shape, texture = _OBJECTS[category]
    coverage = shape(local, rng)
    colour = texture(local, rng)
    jitter = rng.uniform(-0.06, 0.06, size=3) + rng.uniform(-0.08, 0.08)
    return coverage, np.clip(colour + jitter.astype(np.float32), 0, 1)


@dataclass(frozen=True)
class _Local:
    """Object-local coordinates (unit = the object's radius, rotated) and the sizes to turn them into pixels."""

    x: Array
    y: Array
    radius: float
    pixel: float

    def edge(self, distance: Array, softness_px: float = 1.0) -> Array:
        """Coverage of a local signed distance with an edge ``softness_px`` pixels wide (at least one)."""
        return _edge(distance * self.radius, softness_px * self.pixel, self.pixel)

    def line(self, distance: Array, width: float) -> Array:
        """Coverage of a line ``width`` local units wide at local ``distance`` from its axis."""
        return _line(distance * self.radius, width * self.radius, self.pixel)

    @property
    def rho(self) -> Array:
        return np.hypot(self.x, self.y)

    @property
    def theta(self) -> Array:
        return np.arctan2(self.y, self.x)


def _mix(low: tuple[float, float, float], high: tuple[float, float, float], t: Array) -> Array:
    t = np.clip(t, 0, 1)[..., None]
    return (np.asarray(low, np.float32) * (1 - t) + np.asarray(high, np.float32) * t).astype(np.float32)


def _star(p: _Local, rng: np.random.Generator) -> Array:
    outline = 0.72 + 0.26 * np.cos(5 * p.theta + rng.uniform(0, 1))
    return p.edge((p.rho - outline) * 0.8, softness_px=rng.uniform(1.0, 4.0))


def _star_texture(p: _Local, rng: np.random.Generator) -> Array:
    return _mix((0.85, 0.2, 0.12), (0.98, 0.62, 0.15), 0.5 + 0.5 * np.sin(9 * p.x + rng.uniform(0, 6)))


def _ring(p: _Local, rng: np.random.Generator) -> Array:
    return p.edge(np.abs(p.rho - 0.64) - rng.uniform(0.3, 0.34), softness_px=1.5)


def _ring_texture(p: _Local, rng: np.random.Generator) -> Array:
    dots = (np.sin(14 * p.x) * np.sin(14 * p.y) > 0.5).astype(np.float32)
    return _mix((0.1, 0.35, 0.85), (0.35, 0.85, 0.95), 0.3 + 0.7 * dots)


def _furball(p: _Local, rng: np.random.Generator) -> Array:
    coverage = p.edge(p.rho - 0.5, softness_px=2.0)
    count = int(rng.integers(28, 48))
    for angle, length in zip(rng.uniform(0, 2 * math.pi, count), rng.uniform(0.3, 0.5, count)):
        ux, uy = math.cos(angle), math.sin(angle)
        along = np.clip(p.x * ux + p.y * uy, 0.4, 0.45 + length)
        distance = np.hypot(p.x - along * ux, p.y - along * uy)
        coverage = np.maximum(coverage, 0.9 * p.line(distance, 0.025))
    return coverage


def _furball_texture(p: _Local, rng: np.random.Generator) -> Array:
    return _mix((0.45, 0.28, 0.12), (0.85, 0.68, 0.42), 0.5 + 0.5 * np.sin(30 * p.rho + 4 * p.theta))


def _bubble(p: _Local, rng: np.random.Generator) -> Array:
    squash = rng.uniform(0.75, 1.0)
    rho = np.hypot(p.x, p.y / squash) * 0.9
    body = p.edge(rho - 0.85, softness_px=1.5)
    opacity = rng.uniform(0.55, 0.7) + 0.3 * np.clip((rho - 0.6) / 0.25, 0, 1) ** 2
    return body * opacity


def _bubble_texture(p: _Local, rng: np.random.Generator) -> Array:
    highlight = np.exp(-((p.x + 0.3) ** 2 + (p.y + 0.35) ** 2) / 0.04)
    return _mix((0.7, 0.6, 0.92), (1.0, 1.0, 1.0), highlight)


def _leaf(p: _Local, rng: np.random.Generator) -> Array:
    half_width = 0.42 * np.clip(1 - p.x**2, 0, 1)
    blade = p.edge(np.maximum(np.abs(p.y) - half_width, np.abs(p.x) - 1.0) * 0.9, softness_px=1.0)
    along = np.clip(p.x, 0.9, 1.45)
    stem = p.line(np.hypot(p.x - along, p.y - 0.15 * (along - 0.9)), 0.05)
    return np.maximum(blade, stem)


def _leaf_texture(p: _Local, rng: np.random.Generator) -> Array:
    veins = np.maximum(np.exp(-(p.y / 0.03) ** 2), np.exp(-((np.abs(p.y) - 0.5 * np.abs(p.x - 1.2) + 0.2) / 0.03) ** 2))
    return _mix((0.3, 0.75, 0.2), (0.08, 0.35, 0.08), veins)


def _gear(p: _Local, rng: np.random.Generator) -> Array:
    teeth = np.clip(3 * np.cos(9 * p.theta), -1, 1)
    body = p.edge(p.rho - (0.78 + 0.1 * teeth), softness_px=1.0)
    holes = np.zeros_like(p.x)
    for index in range(4):
        angle = index * math.pi / 2 + math.pi / 4
        holes = np.maximum(holes, p.edge(np.hypot(p.x - 0.56 * math.cos(angle), p.y - 0.56 * math.sin(angle)) - 0.1))
    return body * (1 - holes)


def _gear_texture(p: _Local, rng: np.random.Generator) -> Array:
    checker = ((np.floor(p.x * 5) + np.floor(p.y * 5)) % 2).astype(np.float32)
    return _mix((0.55, 0.55, 0.5), (0.92, 0.8, 0.2), 0.25 + 0.5 * checker)


def _cloud(p: _Local, rng: np.random.Generator) -> Array:
    coverage = np.zeros_like(p.x)
    for cx, cy, r in zip(rng.uniform(-0.45, 0.45, 5), rng.uniform(-0.3, 0.3, 5), rng.uniform(0.3, 0.5, 5)):
        coverage = np.maximum(coverage, p.edge(np.hypot(p.x - cx, p.y - cy) - r, softness_px=6.0))
    density = 0.75 + 0.25 * np.sin(6 * p.x + rng.uniform(0, 6)) * np.sin(5 * p.y + rng.uniform(0, 6))
    return coverage * density


def _cloud_texture(p: _Local, rng: np.random.Generator) -> Array:
    return _mix((0.78, 0.8, 0.84), (0.98, 0.98, 1.0), 0.5 + 0.5 * np.sin(7 * p.x) * np.cos(6 * p.y))


def _cross(p: _Local, rng: np.random.Generator) -> Array:
    arm = rng.uniform(0.28, 0.34)
    horizontal = np.maximum(np.abs(p.x) - 0.85, np.abs(p.y) - arm)
    vertical = np.maximum(np.abs(p.y) - 0.85, np.abs(p.x) - arm)
    return p.edge(np.minimum(horizontal, vertical), softness_px=1.0)


def _cross_texture(p: _Local, rng: np.random.Generator) -> Array:
    return _mix((0.85, 0.15, 0.6), (1.0, 0.6, 0.85), 0.5 + 0.5 * np.sin(16 * p.rho))


_OBJECTS: dict[str, tuple[Callable[[_Local, np.random.Generator], Array], Callable[[_Local, np.random.Generator], Array]]] = {
    "star": (_star, _star_texture),
    "ring": (_ring, _ring_texture),
    "furball": (_furball, _furball_texture),
    "bubble": (_bubble, _bubble_texture),
    "leaf": (_leaf, _leaf_texture),
    "gear": (_gear, _gear_texture),
    "cloud": (_cloud, _cloud_texture),
    "cross": (_cross, _cross_texture),
}
