"""Make the figures of docs/data.md and measure the shapes data set's render speed.

Usage (from the repository root)::

    python docs/scripts/make_data_figures.py            # figures + speed
    python docs/scripts/make_data_figures.py --no-speed  # figures only

Writes ``docs/images/shapes_samples.png`` (20 samples with their class names) and
``docs/images/shapes_boxes.png`` (one sample per class with ``box()`` and ``keypoints()`` drawn).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from zflight.data import ShapesDataset

OUT = Path(__file__).resolve().parents[1] / "images"


def _tile(ds: ShapesDataset, i: int, scale: int, caption: str, annotate: bool) -> Image.Image:
    img = Image.fromarray(ds.image(i).permute(1, 2, 0).numpy())
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if annotate:
        d = ImageDraw.Draw(img)
        x0, y0, x1, y1 = ds.box(i)
        d.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=(255, 255, 255))
        for x, y in ds.keypoints(i).values():
            r = 2
            d.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], fill=(255, 255, 255), outline=(0, 0, 0))
    tile = Image.new("RGB", (img.width, img.height + 14), (255, 255, 255))
    tile.paste(img, (0, 0))
    ImageDraw.Draw(tile).text((3, img.height + 1), caption, fill=(0, 0, 0), font=ImageFont.load_default())
    return tile


def _grid(tiles: list[Image.Image], cols: int) -> Image.Image:
    w, h = tiles[0].size
    rows = -(-len(tiles) // cols)
    out = Image.new("RGB", (cols * (w + 4), rows * (h + 4)), (255, 255, 255))
    for k, t in enumerate(tiles):
        out.paste(t, ((k % cols) * (w + 4) + 2, (k // cols) * (h + 4) + 2))
    return out


def figures() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ds = ShapesDataset(20, image_size=96, seed=0)
    tiles = [_tile(ds, i, 1, ds.classes[ds.targets[i]], annotate=False) for i in range(20)]
    # 256-colour palette: the per-pixel noise makes full-colour PNGs several times larger
    _grid(tiles, cols=5).quantize(256).save(OUT / "shapes_samples.png", optimize=True)
    # first ten items hold each class once (labels come in shuffled blocks of ten)
    tiles = [_tile(ds, i, 1, ds.classes[ds.targets[i]], annotate=True) for i in range(10)]
    _grid(tiles, cols=5).quantize(256).save(OUT / "shapes_boxes.png", optimize=True)
    for name in ("shapes_samples.png", "shapes_boxes.png"):
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size / 1024:.0f} KB)")


def speed(n: int = 1000) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    for size in (64, 96, 224):
        ds = ShapesDataset(n, image_size=size, seed=123)
        t = time.perf_counter()
        ds.render_all(progress=False)
        render = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            ds[i]
        cached = n / (time.perf_counter() - t)
        print(f"{size:4d} px: {render:7.0f} renders/s (first access), {cached:7.0f} items/s (cached)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-speed", action="store_true", help="skip the render-speed measurement")
    args = p.parse_args()
    figures()
    if not args.no_speed:
        speed()
