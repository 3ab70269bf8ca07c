"""The embedded offline data set: coloured shapes on cluttered backgrounds, drawn from a seed.

Every item is a function of ``(seed, index)`` only: its parameters come from
``np.random.default_rng([seed, index])``, so an item looks the same whichever order it is read
in and whichever DataLoader worker reads it. Nothing is downloaded and nothing touches the disk.

Each picture holds one object of one of ten classes (:data:`CLASSES`) with a random colour,
size (circumscribed diameter 38–72 % of the image side), position (fully inside the image) and
rotation, on a smooth random colour gradient with soft colour blobs, a few distractor strokes
and dots that are no class, and per-pixel noise. ``clutter`` scales the blobs, distractors,
noise and the object's shading; ``clutter=0`` gives a clean gradient background.

Besides its label, box and keypoints, every item has exact pixel masks computed from the same
random draws and drawing calls as its picture, without rendering it: ``mask(i)`` (the object's
silhouette) and ``concept_masks(i)`` (object, colour name, parts around the keypoints,
distractors, background) for network dissection.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from zflight.data._index import check_index

__all__ = ["CLASSES", "COLOR_NAMES", "PART_RADIUS", "SHAPES_MEAN", "SHAPES_STD", "ShapesDataset", "color_name"]

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

#: Colour names :func:`color_name` gives, in the order of the ``color/<name>`` concepts.
COLOR_NAMES: tuple[str, ...] = (
    "black", "gray", "white", "red", "orange", "brown", "yellow", "green", "cyan", "blue", "purple", "pink"
)

#: Radius of the ``part/<class>/<landmark>`` disks, as a fraction of the object's circumscribed
#: radius (so 3-6 px at 64 px, where that radius is 12-23 px). A quarter keeps the disks of one
#: object apart but for three pairs of landmarks closer than half that radius: the crescent's
#: back and center, the heart's cleft and center, the ell's corner and center.
PART_RADIUS: float = 0.25


def color_name(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """The basic colour name of an RGB colour, by fixed thresholds in HSV.

    With ``v = max/255``, ``s = (max - min)/max`` and the hue ``h`` in degrees:
    ``black`` if ``v < 0.25``; else ``white`` if ``s < 0.2`` and ``v >= 0.8``; else ``gray`` if
    ``s < 0.2``; else by hue: ``red`` below 15 or from 345 (``pink`` instead when
    ``s < 0.5`` and ``v >= 0.7``), ``orange`` 15-45 and ``yellow`` 45-70 (both ``brown`` instead
    when ``v < 0.6``), ``green`` 70-165, ``cyan`` 165-200, ``blue`` 200-260, ``purple``
    260-290, ``pink`` 290-345. Thresholds rather than nearest prototypes, so every name
    covers a region a person can check; on uniformly random colours (how the shapes data set
    draws them) each name gets 1-25 % (green, the widest hue range, the most).

    Args:
        rgb: three values in [0, 255].

    Returns:
        One of :data:`COLOR_NAMES`.

    Raises:
        ValueError: ``rgb`` does not hold three values.

    Example:
        >>> color_name((250, 40, 30)), color_name((120, 120, 125)), color_name((40, 60, 220))
        ('red', 'gray', 'blue')
    """
    values = [float(v) for v in np.asarray(rgb, dtype=np.float64).reshape(-1)]
    if len(values) != 3:
        raise ValueError(f"rgb must hold 3 values, got {len(values)}")
    h, s, v = colorsys.rgb_to_hsv(*(min(255.0, max(0.0, c)) / 255.0 for c in values))
    h *= 360.0
    if v < 0.25:
        return "black"
    if s < 0.2:
        return "white" if v >= 0.8 else "gray"
    if h < 15.0 or h >= 345.0:
        return "pink" if s < 0.5 and v >= 0.7 else "red"
    if h < 70.0:
        if v < 0.6:
            return "brown"
        return "orange" if h < 45.0 else "yellow"
    for upper, name in ((165.0, "green"), (200.0, "cyan"), (260.0, "blue"), (290.0, "purple")):
        if h < upper:
            return name
    return "pink"

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
    # The classes' names and drawings. A subclass with other shapes (the transfer task of
    # zflight.data.transfer) replaces these two and keeps every other draw of the generator.
    _class_names: tuple[str, ...] = CLASSES
    _templates: list[tuple[list[_Op], dict[str, tuple[float, float]]]] = _TEMPLATES

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
        self.classes: list[str] = list(self._class_names)
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
        i = self._check_index(index)  # before seeding, so that index -1 means the last item
        g = self._geometry(i, self._rng(i))
        return {k: self._to_pixels(g, p) for k, p in self._templates[g.label][1].items()}

    def mask(self, index: int, *, min_coverage: float = 0.25) -> torch.Tensor:
        """The object's exact silhouette: the pixels its drawing paints.

        The object is drawn binary on a 2x canvas and box-filtered to the image size, so each
        pixel is covered by 0, 1, 2, 3 or 4 of its four subsamples; it is painted with its
        coverage as alpha. A pixel is in the mask when its coverage (0, 1/4, 1/2, 3/4, 1) is at
        least ``min_coverage``. The default 1/4 takes every pixel the object touches at all:
        exactly the pixels :meth:`box` bounds, and the pixels a render without the object
        differs in (bar the few rim pixels where a quarter of the colour difference rounds to
        nothing). ``min_coverage=0.5`` gives a mask whose area matches the shape's true area
        (about half a pixel less all round); 1.0 only the pixels wholly inside.

        Computed from the object's parameters (the same drawing calls as the picture), without
        rendering the background, distractors or noise, and without touching the image cache.

        Args:
            index: item index.
            min_coverage: the least fraction of a pixel the object must cover, in (0, 1].

        Returns:
            Bool ``[H, W]`` tensor, True on the object.

        Raises:
            ValueError: ``min_coverage`` is not in (0, 1].

        Example:
            >>> ds = ShapesDataset(4, image_size=64)
            >>> m = ds.mask(0)
            >>> x0, y0, x1, y1 = ds.box(0)
            >>> bool(m[y0:y1, x0:x1].sum() == m.sum())
            True
        """
        level = _coverage_level(min_coverage)
        i = self._check_index(index)
        g = self._geometry(i, self._rng(i))  # the first draws: no need to replay the rest
        return torch.from_numpy(_object_coverage(g, self.image_size, self._templates) >= level)

    @property
    def concepts(self) -> list[str]:
        """Names of the concepts :meth:`concept_masks` labels, in a fixed order.

        ``object/<class>`` for each class, ``color/<name>`` for each of :data:`COLOR_NAMES`,
        ``part/<class>/<landmark>`` for each landmark of :meth:`keypoints` whose disk can overlap
        its object (all but the ring's ``center``, which lies in the hole), then ``distractor``
        and ``background``. The same list for every seed and size.
        """
        return list(_concept_names(type(self)))

    def concept_masks(self, index: int, *, min_coverage: float = 0.25) -> dict[str, torch.Tensor]:
        """Pixel masks of the concepts present in item ``index``, for network dissection.

        All come from the item's parameters, through the same drawing calls as its picture,
        without rendering it (about 0.6 ms at 64 px on one CPU core):

        * ``object/<class>``: the object's silhouette, :meth:`mask` with ``min_coverage``.
        * ``color/<name>``: the same silhouette, under the name :func:`color_name` gives the
          object's base colour (before its shading, which changes brightness by at most
          ``15 % * clutter`` either way).
        * ``part/<class>/<landmark>``: the silhouette's pixels whose centre lies within
          ``PART_RADIUS * r`` of the landmark (``r`` the object's circumscribed radius in pixels,
          the landmark from :meth:`keypoints`). Clipped to the silhouette so that a part is
          made of object pixels, as in segmentation part labels (a unit that fires on the
          background beside an arrow's tip is not a tip detector); a part with no pixels (a
          horn tip at 16 px) is left out. Parts may overlap where landmarks are close
          (see :data:`PART_RADIUS`).
        * ``distractor``: the pixels any distractor stroke or dot touches (any of the pixel's
          four 2x subsamples, as drawn), less the object's pixels, since the object is drawn
          over them.
        * ``background``: every pixel in neither ``object/<class>`` nor ``distractor``.

        So ``object``, ``distractor`` and ``background`` partition the image.

        Args:
            index: item index.
            min_coverage: the object's pixel rule, as in :meth:`mask`.

        Returns:
            Dict from concept name (in :attr:`concepts` order) to a bool ``[H, W]`` tensor, holding
            only the concepts with at least one pixel; a concept that is absent from the dict is
            all False in this image. Each tensor is a separate copy.

        Raises:
            ValueError: ``min_coverage`` is not in (0, 1].

        Example:
            >>> ds = ShapesDataset(10, image_size=64)
            >>> masks = ds.concept_masks(0)
            >>> [k for k in masks if not k.startswith("part/")]
            ['object/square', 'color/green', 'distractor', 'background']
            >>> [k for k in masks if k.startswith("part/")][:2]
            ['part/square/vertex0', 'part/square/vertex1']
            >>> bool((masks["object/square"] | masks["distractor"] | masks["background"]).all())
            True
        """
        level = _coverage_level(min_coverage)
        scene, _ = self._scene(self._check_index(index))
        g, s = scene.geometry, self.image_size
        cls = self._class_names[g.label]
        obj = _object_coverage(g, s, self._templates) >= level
        out: dict[str, np.ndarray] = {}
        if not obj.any():  # every object covers dozens of pixels; only min_coverage=1 at 16 px may not
            obj = np.zeros((s, s), dtype=bool)
        else:
            out[f"object/{cls}"] = obj
            out[f"color/{color_name(scene.color)}"] = obj.copy()
            # Parts: the disk test on the part's bounding window only (a few dozen pixels).
            r = PART_RADIUS * g.radius
            for name, p in self._templates[g.label][1].items():
                kx, ky = self._to_pixels(g, p)
                part = _disk(s, kx, ky, r)
                part &= obj
                if part.any():
                    out[f"part/{cls}/{name}"] = part
        if scene.strokes or scene.dots:
            canvas = Image.new("L", (2 * s, 2 * s), 0)
            _draw_distractors(ImageDraw.Draw(canvas), scene, ink=255)
            distractor = np.asarray(canvas.reduce(2)) > 0
            distractor &= ~obj
            if distractor.any():
                out["distractor"] = distractor
                obj = obj | distractor
        out["background"] = ~obj
        return {k: torch.from_numpy(v) for k, v in out.items()}

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
        return check_index(index, self.num_samples, f"ShapesDataset of {self.num_samples} samples")

    def _make_targets(self) -> list[int]:
        # Row b is a random permutation of the classes for indices [b*k, (b+1)*k). The generator
        # fills rows in order, so a longer data set extends a shorter one's labels unchanged.
        k = len(self._class_names)
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

    def _scene(self, i: int) -> tuple[_Scene, np.random.Generator]:
        """Make every random draw of item ``i`` but the pixel noise, without drawing anything.

        The one draw that depends on pixels, the object colour's rejection loop, needs the
        background only under the object's landmarks, so only those few pixels are evaluated
        (bit-identical to the full background: same float32 operations, same 1-D blob profiles).
        :meth:`_render` draws from the returned scene and continues the returned generator for
        the noise, so the masks (:meth:`mask`, :meth:`concept_masks`) and the pictures share one
        sequence of draws and cannot drift apart.
        """
        rng = self._rng(i)
        g = self._geometry(i, rng)
        s, c = self.image_size, self.clutter

        # Background: linear gradient between two random colours, then soft colour blobs.
        c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        phi = rng.uniform(0, 2 * math.pi)
        blobs: list[tuple[np.ndarray, float, float, float, float]] = []
        n_blobs = int(round(c * rng.integers(0, 3)))
        for _ in range(n_blobs):
            col = rng.uniform(0, 255, 3).astype(np.float32)
            bx, by = rng.uniform(0, 1, 2)
            sigma = rng.uniform(0.08, 0.25)
            a = min(1.0, rng.uniform(0.3, 0.6) * c)
            blobs.append((col, bx, by, sigma, a))
        background = _Background(c0, c1, phi, tuple(blobs))

        # The object's colour must stand out from the background everywhere under it (the
        # gradient and blobs vary across a large object), else parts of the shape vanish and the
        # label is unknowable. Rejection on the worst of its landmarks keeps the colour otherwise
        # uniform; after 30 tries the best candidate wins.
        pts = [self._to_pixels(g, p) for p in self._templates[g.label][1].values()]
        rows = np.array([min(s - 1, max(0, int(y))) for _, y in pts])
        cols = np.array([min(s - 1, max(0, int(x))) for x, _ in pts])
        under = self._background(background, rows, cols)
        best, best_d = None, -1.0
        for _ in range(30):
            color = rng.uniform(0, 255, 3).astype(np.float32)
            d = float(np.linalg.norm(under - color, axis=1).min())
            if d > best_d:
                best, best_d = color, d
            if d > 100.0:
                break
        assert best is not None

        # Distractors: straight strokes (1-2 px) and small dots (diameter <= 8 % of the side, far
        # below the smallest object), drawn under the object so the box stays exact. Strokes are
        # single segments: bent ones make corners that read as parts of triangles, arrows or Ls,
        # which (measured) slowed learning several-fold without teaching anything about edges.
        # Coordinates are on the 2x canvas.
        ss = 2 * s
        unit = ss / 64.0  # one 1x pixel at 64 px, in 2x canvas pixels
        strokes: list[tuple[list[tuple[float, float]], tuple[int, int, int], int]] = []
        for _ in range(int(round(c * rng.integers(0, 3)))):
            line = [tuple(p) for p in rng.uniform(0, ss, (2, 2))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            width = max(1, int(round(rng.uniform(1.0, 2.0) * unit)))
            strokes.append((line, fill, width))  # type: ignore[arg-type]
        dots: list[tuple[list[float], tuple[int, int, int]]] = []
        for _ in range(int(round(c * rng.integers(1, 3)))):
            x, y = rng.uniform(0, ss, 2)
            rad = rng.uniform(1.0, 2.5) * unit
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            dots.append(([x - rad, y - rad, x + rad, y + rad], fill))  # type: ignore[arg-type]

        psi = rng.uniform(0, 2 * math.pi)  # direction of the object's shading
        return _Scene(g, background, best, tuple(strokes), tuple(dots), float(psi)), rng

    def _background(self, b: _Background, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The smooth background (gradient and blobs, float32 ``[..., 3]``) at pixels ``(rows, cols)``.

        ``rows`` and ``cols`` broadcast against each other: ``arange(s)[:, None]`` and
        ``arange(s)[None, :]`` give the whole ``[s, s, 3]`` picture, two 1-D arrays a few pixels.
        Every pixel goes through the same float32 operations either way, so the values agree
        to the bit (the colour choice in :meth:`_scene` depends on them).
        """
        s = self.image_size
        grid = (np.arange(s, dtype=np.float32) + 0.5) / s  # pixel centres in [0, 1]
        cp, sp = math.cos(b.phi), math.sin(b.phi)
        lo, hi = min(0.0, cp) + min(0.0, sp), max(0.0, cp) + max(0.0, sp)
        t = ((cp * grid[cols] + sp * grid[rows] - lo) / (hi - lo))[..., None]
        bg = b.c0 + (b.c1 - b.c0) * t
        for col, bx, by, sigma, a in b.blobs:
            # The 1-D profiles over the whole grid, then indexed: the same exp() calls at any size.
            gx = np.exp(-((grid - bx) ** 2) / (2 * sigma**2))
            gy = np.exp(-((grid - by) ** 2) / (2 * sigma**2))
            w = (a * gy[rows] * gx[cols])[..., None]
            bg += (col - bg) * w
        return bg

    def _render(
        self, i: int, *, draw_object: bool = True, draw_distractors: bool = True
    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Draw item ``i``: returns an ``[H, W, 3]`` uint8 array and the object's box.

        ``draw_object=False`` (``draw_distractors=False``) leaves the object (the distractor
        strokes and dots) out but draws everything else identically (all random draws still
        happen), which is how the tests check the box and the masks against the pixels.
        """
        scene, rng = self._scene(i)
        g = scene.geometry
        s, c = self.image_size, self.clutter
        ar = np.arange(s)
        # The background is smooth, so it is computed at 1x and upsampled (4x less numpy work
        # than drawing at 2x); distractors and the object are drawn at 2x and box-filtered down.
        bg = self._background(scene.background, ar[:, None], ar[None, :])
        bg8 = np.clip(bg + 0.5, 0, 255).astype(np.uint8)
        canvas = Image.fromarray(np.ascontiguousarray(bg8.repeat(2, axis=0).repeat(2, axis=1)), "RGB")
        if draw_distractors:
            _draw_distractors(ImageDraw.Draw(canvas), scene)
        bg1 = np.asarray(canvas.reduce(2), dtype=np.float32)

        alpha = _object_coverage(g, s, self._templates).astype(np.float32)[..., None] / 255.0

        # Shading: the object's colour brightens along a random direction, a cue beyond flat colour.
        g1 = (np.arange(s, dtype=np.float32) + 0.5 - s / 2) / s
        shade = 1.0 + 0.3 * c * (math.cos(scene.psi) * g1[None, :] + math.sin(scene.psi) * g1[:, None])
        obj = np.clip(scene.color * shade[..., None], 0, 255)
        img = bg1 * (1 - alpha) + obj * alpha if draw_object else bg1
        if c > 0:
            img = img + rng.standard_normal((s, s, 3), dtype=np.float32) * (5.0 * c)
        out = np.clip(img + 0.5, 0, 255).astype(np.uint8)

        ys, xs = np.nonzero(alpha[..., 0] > 0)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        return out, box


@dataclass(frozen=True)
class _Background:
    c0: np.ndarray  # gradient end colours, float32 [3]
    c1: np.ndarray
    phi: float  # gradient direction
    blobs: tuple[tuple[np.ndarray, float, float, float, float], ...]  # (colour, x, y, sigma, alpha)


@dataclass(frozen=True)
class _Scene:
    """Every random choice of one item but its pixel noise (see ``ShapesDataset._scene``)."""

    geometry: _Geometry
    background: _Background
    color: np.ndarray  # the object's base colour, float32 RGB [3] in [0, 255]
    strokes: tuple[tuple[list[tuple[float, float]], tuple[int, int, int], int], ...]  # 2x canvas
    dots: tuple[tuple[list[float], tuple[int, int, int]], ...]  # ellipse boxes on the 2x canvas
    psi: float  # shading direction


def _object_coverage(
    g: _Geometry, size: int, templates: list[tuple[list[_Op], dict[str, tuple[float, float]]]] = _TEMPLATES
) -> np.ndarray:
    """The object's coverage of each pixel, uint8 ``[size, size]``: 0, 64, 128, 191 or 255.

    Drawn binary on a 2x canvas and box-filtered 2x2 down, so each value is a count of the
    pixel's four subsamples that lie inside (PIL rounds k*255/4 to 0, 64, 128, 191, 255).
    """
    mask = Image.new("L", (2 * size, 2 * size), 0)
    mdraw = ImageDraw.Draw(mask)
    for op in templates[g.label][0]:
        # continuous pixel coordinate p maps to PIL's 2x pixel-centre coordinate 2p - 0.5
        if op[0] == "poly":
            pts = [ShapesDataset._to_pixels(g, p) for p in op[1]]
            mdraw.polygon([(2 * x - 0.5, 2 * y - 0.5) for x, y in pts], fill=op[2])
        else:
            x, y = ShapesDataset._to_pixels(g, op[1])
            r = 2 * op[2] * g.radius
            mdraw.ellipse([2 * x - 0.5 - r, 2 * y - 0.5 - r, 2 * x - 0.5 + r, 2 * y - 0.5 + r], fill=op[3])
    return np.asarray(mask.reduce(2))


def _draw_distractors(draw: ImageDraw.ImageDraw, scene: _Scene, ink: Any = None) -> None:
    """Draw the scene's strokes, then its dots, on a 2x canvas, in their colours or all in ``ink``."""
    for line, fill, width in scene.strokes:
        draw.line(line, fill=fill if ink is None else ink, width=width)
    for ellipse, fill in scene.dots:
        draw.ellipse(ellipse, fill=fill if ink is None else ink)


def _coverage_level(min_coverage: float) -> int:
    """The least uint8 coverage value (:func:`_object_coverage`) that meets ``min_coverage``."""
    if isinstance(min_coverage, bool) or not isinstance(min_coverage, (int, float)) or not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be a number in (0, 1], got {min_coverage!r}")
    # coverage k/4 >= min_coverage for the smallest such k; the 1e-9 forgives 0.25 written as 1/4
    k = math.ceil(4 * float(min_coverage) - 1e-9)
    return (0, 64, 128, 191, 255)[k]


def _disk(size: int, x: float, y: float, r: float) -> np.ndarray:
    """Bool ``[size, size]``: pixels whose centre ``(j + 0.5, i + 0.5)`` lies within ``r`` of ``(x, y)``."""
    out = np.zeros((size, size), dtype=bool)
    x0, x1 = max(0, math.floor(x - r - 0.5)), min(size, math.ceil(x + r + 0.5))
    y0, y1 = max(0, math.floor(y - r - 0.5)), min(size, math.ceil(y + r + 0.5))
    if x0 < x1 and y0 < y1:
        dx = np.arange(x0, x1) + 0.5 - x
        dy = np.arange(y0, y1) + 0.5 - y
        out[y0:y1, x0:x1] = dy[:, None] ** 2 + dx[None, :] ** 2 <= r * r
    return out


@functools.cache
def _concept_names(kind: type[ShapesDataset] = ShapesDataset) -> tuple[str, ...]:
    """The concept names of a data set class (its classes and templates), computed once."""
    classes, templates = kind._class_names, kind._templates
    names = [f"object/{c}" for c in classes] + [f"color/{c}" for c in COLOR_NAMES]
    # A landmark's part is listed when its disk overlaps the object drawn large (radius 48 px,
    # unrotated): that drops only the ring's centre, whose disk lies inside the hole.
    size = 128
    for label, (_, keypoints) in enumerate(templates):
        g = _Geometry(label, size / 2, size / 2, 48.0, 0.0)
        obj = _object_coverage(g, size, templates) > 0
        for name, p in keypoints.items():
            x, y = ShapesDataset._to_pixels(g, p)
            if (_disk(size, x, y, PART_RADIUS * g.radius) & obj).any():
                names.append(f"part/{classes[label]}/{name}")
    return (*names, "distractor", "background")
