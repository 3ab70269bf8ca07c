"""Make docs/images/concept_masks.png: shapes images with their concept masks overlaid.

Usage (from the repository root)::

    python docs/scripts/make_concept_figure.py

One row per image (64 px shown at 3x): the picture; its ``object/<class>`` mask (captioned with
its ``color/<name>``); its ``part/<class>/<landmark>`` masks, one colour each; its
``distractor`` mask (red) and ``background`` (blue). Drawn at ``clutter=1.5`` so that most
rows show distractors. It also prints how long
``ShapesDataset.mask`` and ``concept_masks`` take per image.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from zflight.data.shapes import ShapesDataset

OUT = Path(__file__).resolve().parents[1] / "images" / "concept_masks.png"
SCALE = 3
# Distinct, saturated overlay colours for up to six parts of one object.
PART_COLORS = [(255, 60, 60), (60, 200, 60), (60, 120, 255), (255, 200, 0), (220, 0, 220), (0, 220, 220)]


def _overlay(img: np.ndarray, layers: list[tuple[torch.Tensor, tuple[int, int, int]]], alpha: float) -> np.ndarray:
    """Dim the picture, then paint each mask in its colour at ``alpha`` over it."""
    out = img.astype(np.float32) * 0.45 + 255 * 0.55 * 0.5  # washed out, so the masks read
    for mask, color in layers:
        m = mask.numpy()
        out[m] = out[m] * (1 - alpha) + np.array(color, np.float32) * alpha
    return out.clip(0, 255).astype(np.uint8)


def _tile(pixels: np.ndarray, caption: str | list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """The picture at ``SCALE``x with a caption: a string, or ``(word, colour)`` pieces."""
    img = Image.fromarray(pixels).resize((pixels.shape[1] * SCALE, pixels.shape[0] * SCALE), Image.NEAREST)
    tile = Image.new("RGB", (img.width, img.height + 14), (255, 255, 255))
    tile.paste(img, (0, 0))
    draw, font = ImageDraw.Draw(tile), ImageFont.load_default()
    x = 2
    for word, color in [(caption, (0, 0, 0))] if isinstance(caption, str) else caption:
        draw.text((x, img.height + 1), word, fill=color, font=font)
        x += int(draw.textlength(word + " ", font=font))
    return tile


def figure(indices: list[int]) -> Image.Image:
    ds = ShapesDataset(max(indices) + 1, image_size=64, seed=0, clutter=1.5)
    rows = []
    for i in indices:
        img = ds.image(i).permute(1, 2, 0).numpy()
        masks = ds.concept_masks(i)
        obj = next(k for k in masks if k.startswith("object/"))
        color = next(k for k in masks if k.startswith("color/"))
        parts = [k for k in masks if k.startswith("part/")]
        tiles = [
            _tile(img, f"#{i}"),
            _tile(_overlay(img, [(masks[obj], (255, 255, 255))], 0.9), f"{obj} {color}"),
            _tile(
                _overlay(img, [(masks[k], PART_COLORS[n % len(PART_COLORS)]) for n, k in enumerate(parts)], 0.9),
                # each landmark's name in (a darker shade of) its overlay colour, to read as a key
                [
                    (k.rsplit("/", 1)[1], tuple(int(0.7 * v) for v in PART_COLORS[n % len(PART_COLORS)]))
                    for n, k in enumerate(parts)
                ],
            ),
            _tile(
                _overlay(img, [(masks["background"], (70, 110, 255))]
                         + ([(masks["distractor"], (255, 40, 40))] if "distractor" in masks else []), 0.8),
                "distractor (red), background",
            ),
        ]
        rows.append(tiles)
    w, h = rows[0][0].size
    out = Image.new("RGB", (4 * (w + 4), len(rows) * (h + 4)), (255, 255, 255))
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            out.paste(t, (c * (w + 4) + 2, r * (h + 4) + 2))
    return out


def speed(n: int = 2000) -> None:
    ds = ShapesDataset(n, image_size=64, seed=1)
    for name in ("mask", "concept_masks"):
        f = getattr(ds, name)
        f(0)
        t = time.perf_counter()
        for i in range(n):
            f(i)
        print(f"{name}: {(time.perf_counter() - t) / n * 1e3:.3f} ms per 64 px image ({n} images)")


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # 256-colour palette: the per-pixel noise makes full-colour PNGs several times larger
    figure([0, 2, 5, 7, 9]).quantize(256).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")
    speed()
