"""Copy PNGs of a training run (or of an analysis ``--out`` folder) into docs/images, kept small.

Usage (from the repository root)::

    python docs/scripts/copy_run_figures.py RUN_FIGURES_DIR PREFIX NAME [NAME ...]
    # e.g. the pictures of docs/visualization.md:
    python docs/scripts/copy_run_figures.py runs/quickstart/version_0/figures quickstart \\
        evolution_conv1.png evolution_conv2.png evolution_conv5.png filters_conv1.png \\
        top9_conv1_epoch010.png top9_conv2_epoch010.png top9_conv5_epoch010.png

Each ``NAME`` is written as ``docs/images/<PREFIX>_<NAME>``. A PNG over ``--max_kb`` is first
re-saved with a 256-colour palette (same pixels size), then, if still too large, downscaled
by steps of 0.85 until it fits.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "images"


def _encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def shrink(src: Path, max_kb: int) -> bytes:
    """PNG bytes of ``src`` no larger than ``max_kb`` KB (palette first, then downscaling)."""
    data = src.read_bytes()
    if len(data) < max_kb * 1024:
        return data
    img = Image.open(src).convert("RGB")
    scale = 1.0
    while True:
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        small = img if scale == 1.0 else img.resize((w, h), Image.LANCZOS)
        data = _encode(small.quantize(colors=256, method=Image.MEDIANCUT, dither=Image.NONE))
        if len(data) < max_kb * 1024:
            return data
        scale *= 0.85


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("prefix")
    p.add_argument("names", nargs="+")
    p.add_argument("--max_kb", type=int, default=150)
    args = p.parse_args()
    for name in args.names:
        data = shrink(args.src / name, args.max_kb)
        dst = OUT / f"{args.prefix}_{name}"
        dst.write_bytes(data)
        size = Image.open(dst).size
        print(f"{dst}: {len(data) / 1024:.0f} KB, {size[0]}x{size[1]}")


if __name__ == "__main__":
    main()
