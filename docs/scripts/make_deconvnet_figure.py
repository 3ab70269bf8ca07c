"""Make docs/images/deconvnet_conv5.png: deconvnet projections of conv5 maps of a trained ZFNet.

Usage (from the repository root)::

    python docs/scripts/make_deconvnet_figure.py runs/quickstart/version_0/checkpoints/last.ckpt

For each of ``--maps`` conv5 feature maps the figure has one row: the ``--per_map`` validation
images (among the first ``--search`` of the split) where that map's strongest activation is
largest, each followed by its projection (``DeconvNet.project(..., mode="max")``: only the
map's single strongest activation is sent back down, as in the paper). The maps are the ones
with the largest top activation, skipping maps whose top image has a class already shown,
so the rows show different classes. The PNG is saved with a 256-colour palette when a full
RGB file would exceed 150 KB. Projections are displayed with
``zflight.figures.normalize_projection`` (zero = mid gray, scaled per projection).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from zflight.attribution import DeconvNet
from zflight.figures import normalize_projection

OUT = Path(__file__).resolve().parents[1] / "images" / "deconvnet_conv5.png"


def load_model(path: str):
    """The checkpoint's ImageClassifier (eval mode) and its data module's saved hyperparameters."""
    try:
        from zflight.checkpoint import read_checkpoint

        return read_checkpoint(path)
    except ImportError:  # older trees: rebuild by hand
        from zflight.module import ImageClassifier

        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hp = dict(ckpt["hyper_parameters"])
        module = ImageClassifier(**{k: v for k, v in hp.items() if not k.startswith("_")})
        module.load_state_dict(ckpt["state_dict"])
        return module.eval(), dict(ckpt.get("datamodule_hyper_parameters") or {})


def _to_pil(img: torch.Tensor, scale: int) -> Image.Image:
    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    im = Image.fromarray(arr)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--layer", default="conv5")
    p.add_argument("--maps", type=int, default=4)
    p.add_argument("--per_map", type=int, default=2)
    p.add_argument("--search", type=int, default=500, help="validation images searched")
    p.add_argument("--scale", type=int, default=2, help="pixel magnification of the 64 px images")
    args = p.parse_args()

    from zflight.data import ShapesDataModule

    module, data_hp = load_model(args.ckpt)
    model = module.model.eval()
    image_size = int(module.hparams.get("image_size", 64))
    keep = {k: v for k, v in data_hp.items() if k in ("image_size", "val_size", "seed", "clutter")}
    dm = ShapesDataModule(**{"image_size": image_size, **keep})
    dm.setup("validate")
    ds = dm.val_dataset
    n = min(args.search, len(ds))
    x = torch.stack([ds[i][0] for i in range(n)])
    labels = [int(ds[i][1]) for i in range(n)]
    classes = dm.classes

    # Strongest activation of every map on every image (one forward pass to the layer).
    acts = {}
    names = [n for n, _ in model.named_modules() if n == args.layer or n.endswith("." + args.layer)]
    if len(names) != 1:
        raise SystemExit(f"layer {args.layer!r} names {len(names)} modules: {names}")
    layer = model.get_submodule(names[0])
    hook = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    peak = acts["a"].amax(dim=(2, 3))  # [N, C]
    best_val, best_img = peak.max(dim=0)  # per map

    maps, seen = [], set()
    for c in best_val.argsort(descending=True).tolist():
        cls = labels[best_img[c]]
        if cls in seen:
            continue
        maps.append(c)
        seen.add(cls)
        if len(maps) == args.maps:
            break

    deconv = DeconvNet(model)
    rows = []
    for c in maps:
        idx = peak[:, c].argsort(descending=True)[: args.per_map]
        proj = deconv.project(x[idx], layer=args.layer, channels=int(c), mode="max")
        rows.append((c, idx.tolist(), ds.denormalize(x[idx]), normalize_projection(proj)))

    s = image_size * args.scale
    gap, pair_gap, label_h, left = 2, 10, 14, 62
    width = left + args.per_map * (2 * s + gap) + (args.per_map - 1) * pair_gap
    height = len(rows) * (s + label_h + gap) + 16
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((left, 2), "image | projection (conv5, strongest activation only)", fill="black", font=font)
    y = 16
    for c, idx, imgs, projs in rows:
        draw.text((4, y + label_h + s // 2 - 6), f"map {c}", fill="black", font=font)
        x0 = left
        for i, img, pr in zip(idx, imgs, projs):
            draw.text((x0, y), f"val #{i}: {classes[labels[i]]}", fill="black", font=font)
            canvas.paste(_to_pil(img, args.scale), (x0, y + label_h))
            canvas.paste(_to_pil(pr, args.scale), (x0 + s + gap, y + label_h))
            x0 += 2 * s + gap + pair_gap
        y += s + label_h + gap
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    if args.out.stat().st_size > 150 * 1024:  # noisy projections compress badly: 256 colours
        canvas.quantize(colors=256, method=Image.MEDIANCUT, dither=Image.NONE).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB; maps {maps}")
    for c, idx, _, _ in rows:
        print(f"  map {c}: images {idx} ({', '.join(classes[labels[i]] for i in idx)}), "
              f"peak {[round(float(peak[i, c]), 2) for i in idx]}")


if __name__ == "__main__":
    main()
