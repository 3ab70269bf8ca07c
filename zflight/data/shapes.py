"""The embedded offline data set: coloured shapes on cluttered backgrounds, drawn from a seed.

Every item is a function of ``(seed, index)`` only: its parameters come from
``np.random.default_rng([seed, index])``, so an item looks the same whichever order it is read
in and whichever DataLoader worker reads it. Nothing is downloaded and nothing touches the disk.

Each picture holds one object of one of ten classes (:data:`CLASSES`) with a random colour,
size (circumscribed diameter 38–72 % of the image side), position (fully inside the image) and
rotation, on a smooth random colour gradient with soft colour blobs, a few distractor strokes
and dots that are no class, and per-pixel noise. ``clutter`` scales the blobs, distractors,
noise and the object's shading; ``clutter=0`` gives a clean gradient background.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

__all__ = ["ShapesDataset", "CLASSES", "SHAPES_MEAN", "SHAPES_STD"]

#: Class names, in label order.
CLASSES: tuple[str, ...] = (
    "circle",
    "ring",
    "triangle",
    "square",
    "star",
    "cross",
    "crescent",
    "arrow",
    "heart",
    "ell",
)

#: Per-channel mean of the rendered pixels in [0, 1]. Fixed rather than measured per data set so
#: that every seed, size and split normalizes alike; 0.5 is also what 2,000 renders at
#: ``clutter=1`` average to (0.49–0.51 per channel), so 0.0 after normalization is mid gray.
SHAPES_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: Per-channel standard deviation of the rendered pixels (measured: 0.233–0.235 at ``clutter=1``).
SHAPES_STD: tuple[float, float, float] = (0.23, 0.23, 0.23)

# A few ops per class, in unit coordinates (object inside the unit circle, y pointing down).
# ("poly", [(x, y), ...], fill) or ("disk", (x, y), radius, fill); fill 0 cuts a hole.
_Op = tuple[Any, ...]


def _regular(n: int, start_deg: float = -90.0) -> list[tuple[float, float]]:
    return [
        (math.cos(math.radians(start_deg + 360.0 * k / n)), math.sin(math.radians(start_deg + 360.0 * k / n)))
        for k in range(n)
    ]


def _normalized(
    ops: list[_Op], keypoints: dict[str, tuple[float, float]], points: list[tuple[float, float]]
) -> tuple[list[_Op], dict[str, tuple[float, float]]]:
    """Centre ``points``' bounding box on the origin and scale its farthest point to radius 1.

    Rotation then never pushes the object outside the circle the sampler keeps inside the image.
    """
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    s = 1.0 / max(math.hypot(x - cx, y - cy) for x, y in points)

    def f(p: tuple[float, float]) -> tuple[float, float]:
        return ((p[0] - cx) * s, (p[1] - cy) * s)

    out: list[_Op] = []
    for op in ops:
        if op[0] == "poly":
            out.append(("poly", [f(p) for p in op[1]], op[2]))
        else:
            out.append(("disk", f(op[1]), op[2] * s, op[3]))
    return out, {k: f(v) for k, v in keypoints.items()}


def _build_templates() -> list[tuple[list[_Op], dict[str, tuple[float, float]]]]:
    t: list[tuple[list[_Op], dict[str, tuple[float, float]]]] = []
    # circle, ring: "rim0" turns with the (otherwise invisible) rotation, a stable name all the same.
    t.append(([("disk", (0.0, 0.0), 1.0, 255)], {"center": (0.0, 0.0), "rim0": (1.0, 0.0)}))
    t.append(
        (
            [("disk", (0.0, 0.0), 1.0, 255), ("disk", (0.0, 0.0), 0.55, 0)],
            {"center": (0.0, 0.0), "rim0": (1.0, 0.0)},
        )
    )
    tri = _regular(3)
    t.append(([("poly", tri, 255)], {**{f"vertex{k}": p for k, p in enumerate(tri)}, "center": (0.0, 0.0)}))
    sq = _regular(4, -45.0)
    t.append(([("poly", sq, 255)], {**{f"vertex{k}": p for k, p in enumerate(sq)}, "center": (0.0, 0.0)}))
    tips, inner = _regular(5), [(0.42 * x, 0.42 * y) for x, y in _regular(5, -54.0)]
    star = [p for pair in zip(tips, inner) for p in pair]
    t.append(([("poly", star, 255)], {**{f"tip{k}": p for k, p in enumerate(tips)}, "center": (0.0, 0.0)}))
    w = 0.24  # plus sign, arms of half-width w
    cross = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    kp = {"arm0": (1.0, 0.0), "arm1": (0.0, 1.0), "arm2": (-1.0, 0.0), "arm3": (0.0, -1.0), "center": (0.0, 0.0)}
    t.append(_normalized([("poly", cross, 255)], kp, cross))
    # crescent: unit disk minus a disk of radius 0.8 shifted by 0.45; horns where the circles meet.
    # The horns thin out to nothing where the circles meet, so the "tips" sit 10 degrees back
    # from there, where the horn is still some pixels wide.
    meet = math.acos((1.0 - 0.64 + 0.45**2) / (2 * 0.45))
    hx, hy = 0.97 * math.cos(meet + 0.17), 0.97 * math.sin(meet + 0.17)
    t.append(
        (
            [("disk", (0.0, 0.0), 1.0, 255), ("disk", (0.45, 0.0), 0.8, 0)],
            {"tip0": (hx, -hy), "tip1": (hx, hy), "back": (-1.0, 0.0), "center": (-0.675, 0.0)},
        )
    )
    arrow = [(-1, -0.15), (0.2, -0.15), (0.2, -0.5), (1, 0), (0.2, 0.5), (0.2, 0.15), (-1, 0.15)]
    kp = {"tip": (1.0, 0.0), "tail": (-1.0, 0.0), "barb0": (0.2, -0.5), "barb1": (0.2, 0.5), "center": (0.0, 0.0)}
    t.append(_normalized([("poly", arrow, 255)], kp, arrow))
    ts = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    hxs = 16 * np.sin(ts) ** 3
    hys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
    heart = [(float(x), float(y)) for x, y in zip(hxs, hys)]
    left, right = hxs < 0, hxs > 0
    il = int(np.flatnonzero(left)[np.argmin(hys[left])])
    ir = int(np.flatnonzero(right)[np.argmin(hys[right])])
    kp = {"tip": heart[32], "cleft": heart[0], "lobe0": heart[il], "lobe1": heart[ir], "center": (0.0, 3.0)}
    t.append(_normalized([("poly", heart, 255)], kp, heart))
    th = 0.42  # the L's bar thickness, as a fraction of its side
    ell = [(0, 0), (th, 0), (th, 1 - th), (1, 1 - th), (1, 1), (0, 1)]
    kp = {"corner": (0.0, 1.0), "end0": (th / 2, 0.0), "end1": (1.0, 1 - th / 2), "center": (th / 2, 1 - th / 2)}
    t.append(_normalized([("poly", ell, 255)], kp, ell))
    return t


_TEMPLATES = _build_templates()
assert len(_TEMPLATES) == len(CLASSES)


@dataclass(frozen=True)
class _Geometry:
    label: int
    cx: float  # object centre, pixel coordinates (pixel (i, j) covers [i, i+1) × [j, j+1))
    cy: float
    radius: float  # circumscribed radius in pixels
    angle: float  # radians


class ShapesDataset(Dataset):
    """Coloured shapes of ten classes on cluttered backgrounds, generated from a seed.

    Items render on first access and are cached as uint8 in one preallocated tensor, so every
    epoch after the first costs only a normalization. :meth:`render_all` fills the cache up front
    (with a progress bar); do that before forking DataLoader workers, or each worker renders (and
    caches) its own copy.

    Labels are balanced: each consecutive block of ``len(classes)`` indices holds every class
    once, in a seeded random order, so any prefix of the data set is balanced too.

    Args:
        num_samples: number of items.
        image_size: height and width in pixels (at least 16).
        seed: non-negative int; item ``i`` depends only on ``(seed, i)``.
        clutter: scales background blobs, distractor strokes/dots, noise and object shading
            (0 = clean gradient background, 1 = default, larger = harder).
        transform: optional callable applied to the normalized ``[3, H, W]`` float tensor.

    Example:
        >>> ds = ShapesDataset(100, image_size=64, seed=0)
        >>> x, y = ds[3]
        >>> x.shape, ds.classes[y] in ds.classes
        (torch.Size([3, 64, 64]), True)
    """

    mean: tuple[float, float, float] = SHAPES_MEAN
    std: tuple[float, float, float] = SHAPES_STD

    def __init__(
        self,
        num_samples: int,
        *,
        image_size: int = 64,
        seed: int = 0,
        clutter: float = 1.0,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(clutter, (int, float)) or not math.isfinite(clutter) or clutter < 0:
            raise ValueError(f"clutter must be a finite number >= 0, got {clutter!r}")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.clutter = float(clutter)
        self.transform = transform
        self.classes: list[str] = list(CLASSES)
        self.targets: list[int] = self._make_targets()
        # Allocated on first render, so that constructing a data set is free.
        self._cache: torch.Tensor | None = None
        self._rendered = np.zeros(self.num_samples, dtype=bool)
        self._boxes = np.zeros((self.num_samples, 4), dtype=np.int32)
        self._mean_t = torch.tensor(self.mean).view(3, 1, 1)
        self._std_t = torch.tensor(self.std).view(3, 1, 1)

    # ----------------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(image, label)``: a normalized float ``[3, H, W]`` tensor and an int."""
        i = self._check_index(index)
        x = (self._cached(i).float().div_(255.0) - self._mean_t) / self._std_t
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(num_samples={self.num_samples}, image_size={self.image_size}, "
            f"seed={self.seed}, clutter={self.clutter})"
        )

    def image(self, index: int) -> torch.Tensor:
        """The raw rendered picture of item ``index``, for display.

        Args:
            index: item index.

        Returns:
            A uint8 ``[3, H, W]`` tensor (a copy; the cache stays intact).

        Example:
            >>> ShapesDataset(4).image(0).dtype
            torch.uint8
        """
        return self._cached(self._check_index(index)).clone()

    def box(self, index: int) -> tuple[int, int, int, int]:
        """The object's bounding box, tight around every pixel the object touches.

        Args:
            index: item index.

        Returns:
            ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive, so the object lies in
            ``image[:, y0:y1, x0:x1]``.

        Example:
            >>> x0, y0, x1, y1 = ShapesDataset(4).box(0)
            >>> 0 <= x0 < x1 <= 64
            True
        """
        i = self._check_index(index)
        self._cached(i)
        x0, y0, x1, y1 = (int(v) for v in self._boxes[i])
        return x0, y0, x1, y1

    def keypoints(self, index: int) -> dict[str, tuple[float, float]]:
        """Named landmarks of the object, in pixel coordinates ``(x, y)``.

        The names are fixed per class (e.g. ``arrow``: ``tip``, ``tail``, ``barb0``, ``barb1``,
        ``center``; ``triangle``: ``vertex0``…``vertex2``, ``center``), so "the same part" can be
        found in every image of a class. Every class has a ``center``. Needs no rendering.

        Args:
            index: item index.

        Returns:
            Dict from landmark name to ``(x, y)`` floats; pixel ``(i, j)`` covers
            ``[i, i+1) × [j, j+1)``.

        Example:
            >>> ds = ShapesDataset(20)
            >>> sorted(ds.keypoints(6))   # index 6 is an arrow here
            ['barb0', 'barb1', 'center', 'tail', 'tip']
        """
        g = self._geometry(self._check_index(index), self._rng(index))
        return {k: self._to_pixels(g, p) for k, p in _TEMPLATES[g.label][1].items()}

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization of ``ds[i][0]`` (or a batch of them) for display.

        Args:
            x: ``[..., 3, H, W]`` normalized tensor.

        Returns:
            Tensor of the same shape with values clamped to [0, 1].

        Example:
            >>> ds = ShapesDataset(2)
            >>> torch.allclose(ds.denormalize(ds[0][0]) * 255, ds.image(0).float(), atol=1e-3)
            True
        """
        mean = self._mean_t.to(x.device, x.dtype)
        std = self._std_t.to(x.device, x.dtype)
        return (x * std + mean).clamp(0.0, 1.0)

    def render_all(self, progress: bool = True) -> ShapesDataset:
        """Render every item not yet cached, with a tqdm progress bar.

        Args:
            progress: show the progress bar.

        Returns:
            ``self``, so ``ShapesDataset(n).render_all()`` chains.

        Example:
            >>> ds = ShapesDataset(10).render_all(progress=False)
        """
        from tqdm.auto import tqdm

        todo = np.flatnonzero(~self._rendered)
        for i in tqdm(todo, desc="rendering shapes", unit="img", disable=not progress or len(todo) == 0):
            self._cached(int(i))
        return self

    # ---------------------------------------------------------------------------------- internals
    def _check_index(self, index: int) -> int:
        if isinstance(index, torch.Tensor) and index.numel() == 1:
            index = int(index.item())
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {index} out of range for ShapesDataset of {self.num_samples} samples")
        return i

    def _make_targets(self) -> list[int]:
        # Row b is a random permutation of the classes for indices [b*k, (b+1)*k). The generator
        # fills rows in order, so a longer data set extends a shorter one's labels unchanged.
        k = len(CLASSES)
        keys = np.random.default_rng([self.seed]).random((-(-self.num_samples // k), k))
        return np.argsort(keys, axis=1).reshape(-1)[: self.num_samples].tolist()

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def _geometry(self, i: int, rng: np.random.Generator) -> _Geometry:
        # Must stay the first draws from the item's rng: keypoints() replays only these.
        s = self.image_size
        radius = rng.uniform(0.19, 0.36) * s
        margin = radius + 1.0
        cx = rng.uniform(margin, s - margin)
        cy = rng.uniform(margin, s - margin)
        angle = rng.uniform(0.0, 2 * math.pi)
        return _Geometry(self.targets[i], float(cx), float(cy), float(radius), float(angle))

    @staticmethod
    def _to_pixels(g: _Geometry, p: tuple[float, float]) -> tuple[float, float]:
        c, s = math.cos(g.angle), math.sin(g.angle)
        return (g.cx + g.radius * (c * p[0] - s * p[1]), g.cy + g.radius * (s * p[0] + c * p[1]))

    def _cached(self, i: int) -> torch.Tensor:
        if self._cache is None:
            s = self.image_size
            self._cache = torch.empty((self.num_samples, 3, s, s), dtype=torch.uint8)
        if not self._rendered[i]:
            img, box = self._render(i)
            self._cache[i] = torch.from_numpy(img).permute(2, 0, 1)
            self._boxes[i] = box
            self._rendered[i] = True
        return self._cache[i]

    def _render(self, i: int, *, draw_object: bool = True) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Draw item ``i``: returns an ``[H, W, 3]`` uint8 array and the object's box.

        ``draw_object=False`` leaves the object out but draws everything else identically (all
        random draws still happen), which is how the tests check that the box is tight.
        """
        rng = self._rng(i)
        g = self._geometry(i, rng)
        s, c = self.image_size, self.clutter
        ss = 2 * s  # supersampled canvas: draw at 2x, box-filter down for antialiasing
        grid = (np.arange(s, dtype=np.float32) + 0.5) / s  # pixel centres in [0, 1]

        # Background: linear gradient between two random colours, then soft colour blobs. It is
        # smooth, so it is computed at 1x and upsampled (4x less numpy work than drawing at 2x).
        c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        phi = rng.uniform(0, 2 * math.pi)
        cp, sp = math.cos(phi), math.sin(phi)
        lo, hi = min(0.0, cp) + min(0.0, sp), max(0.0, cp) + max(0.0, sp)
        t = ((cp * grid[None, :] + sp * grid[:, None] - lo) / (hi - lo))[..., None]
        bg = c0 + (c1 - c0) * t
        n_blobs = int(round(c * rng.integers(0, 3)))
        for _ in range(n_blobs):
            col = rng.uniform(0, 255, 3).astype(np.float32)
            bx, by = rng.uniform(0, 1, 2)
            sigma = rng.uniform(0.08, 0.25)
            a = min(1.0, rng.uniform(0.3, 0.6) * c)
            gx = np.exp(-((grid - bx) ** 2) / (2 * sigma**2))
            gy = np.exp(-((grid - by) ** 2) / (2 * sigma**2))
            w = (a * gy[:, None] * gx[None, :])[..., None]
            bg += (col - bg) * w

        # The object's colour must stand out from the background everywhere under it (the
        # gradient and blobs vary across a large object), else parts of the shape vanish and the
        # label is unknowable. Rejection on the worst of its landmarks keeps the colour otherwise
        # uniform; after 30 tries the best candidate wins.
        pts = [self._to_pixels(g, p) for p in _TEMPLATES[g.label][1].values()]
        under = np.stack([bg[min(s - 1, max(0, int(y))), min(s - 1, max(0, int(x)))] for x, y in pts])
        best, best_d = None, -1.0
        for _ in range(30):
            color = rng.uniform(0, 255, 3).astype(np.float32)
            d = float(np.linalg.norm(under - color, axis=1).min())
            if d > best_d:
                best, best_d = color, d
            if d > 100.0:
                break
        color = best

        # Distractors: straight strokes (1-2 px) and small dots (diameter <= 8 % of the side, far
        # below the smallest object), drawn under the object so the box stays exact. Strokes are
        # single segments: bent ones make corners that read as parts of triangles, arrows or Ls,
        # which (measured) slowed learning several-fold without teaching anything about edges.
        bg8 = np.clip(bg + 0.5, 0, 255).astype(np.uint8)
        canvas = Image.fromarray(np.ascontiguousarray(bg8.repeat(2, axis=0).repeat(2, axis=1)), "RGB")
        draw = ImageDraw.Draw(canvas)
        unit = ss / 64.0  # one 1x pixel at 64 px, in 2x canvas pixels
        for _ in range(int(round(c * rng.integers(0, 3)))):
            pts = rng.uniform(0, ss, (2, 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.line([tuple(p) for p in pts], fill=fill, width=max(1, int(round(rng.uniform(1.0, 2.0) * unit))))
        for _ in range(int(round(c * rng.integers(1, 3)))):
            x, y = rng.uniform(0, ss, 2)
            rad = rng.uniform(1.0, 2.5) * unit
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill)
        bg1 = np.asarray(canvas.reduce(2), dtype=np.float32)

        # The object: a binary mask at 2x, box-filtered to coverage in [0, 1].
        mask = Image.new("L", (ss, ss), 0)
        mdraw = ImageDraw.Draw(mask)
        for op in _TEMPLATES[g.label][0]:
            # continuous pixel coordinate p maps to PIL's 2x pixel-centre coordinate 2p - 0.5
            if op[0] == "poly":
                pts = [self._to_pixels(g, p) for p in op[1]]
                mdraw.polygon([(2 * x - 0.5, 2 * y - 0.5) for x, y in pts], fill=op[2])
            else:
                x, y = self._to_pixels(g, op[1])
                r = 2 * op[2] * g.radius
                mdraw.ellipse([2 * x - 0.5 - r, 2 * y - 0.5 - r, 2 * x - 0.5 + r, 2 * y - 0.5 + r], fill=op[3])
        alpha = np.asarray(mask.reduce(2), dtype=np.float32)[..., None] / 255.0

        # Shading: the object's colour brightens along a random direction, a cue beyond flat colour.
        psi = rng.uniform(0, 2 * math.pi)
        g1 = (np.arange(s, dtype=np.float32) + 0.5 - s / 2) / s
        shade = 1.0 + 0.3 * c * (math.cos(psi) * g1[None, :] + math.sin(psi) * g1[:, None])
        obj = np.clip(color * shade[..., None], 0, 255)
        img = bg1 * (1 - alpha) + obj * alpha if draw_object else bg1
        if c > 0:
            img = img + rng.standard_normal((s, s, 3), dtype=np.float32) * (5.0 * c)
        out = np.clip(img + 0.5, 0, 255).astype(np.uint8)

        ys, xs = np.nonzero(alpha[..., 0] > 0)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        return out, box
