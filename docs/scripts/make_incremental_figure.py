"""Make docs/images/incremental_windows.png: what incremental occlusion recomputes, per layer.

Usage (from the repository root)::

    python docs/scripts/make_incremental_figure.py

Top row: zfnet at 224 px with a 48-pixel square at (88, 88) (the issue's job, stride 8): every
feature map of the chain up to where the path switches to full maps, drawn to scale, with the
window the incremental path recomputes for that position (red) and the square's own projective
field. Bottom: multiply-adds per occluded image of each convolution and linear layer, for zfnet
(48 / 8) and torchvision vgg16 (48 / 16), averaged over all positions: a full forward, the
windows as direct convolutions, and as run (3x3 windows with >= 256 channels as Winograd
convolutions on the CPU). Everything comes from the plan :func:`make_scorer` builds; the weights
are random (the geometry does not depend on them), and nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from zflight.attribution import _incremental  # noqa: E402
from zflight.figures import save_figure  # noqa: E402
from zflight.models import build_model  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "images" / "incremental_windows.png"


def _scorer(name: str, size: int, stride: int) -> _incremental.IncrementalScorer:
    torch.manual_seed(0)
    kwargs = {"image_size": 224} if name == "zfnet" else {}
    model = build_model(name, num_classes=1000, **kwargs).eval()
    with torch.no_grad():
        scorer = _incremental.make_scorer(
            model, torch.randn(1, 3, 224, 224), size=size, stride=stride, probe_module=None,
            incremental=True, approximate=None, windows="exact", winograd=True)
    assert scorer is not None
    return scorer


def _window(axis: _incremental._AxisPlan, i: int, k: int) -> tuple[int, int]:
    """Start and length of op ``i``'s window for position index ``k`` along one axis."""
    layer = axis.classes[int(axis.class_of[k])].layers[i]
    return int(layer.start[int(axis.local[k])]), layer.length


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()

    zf = _scorer("zfnet", 48, 8)
    vgg = _scorer("vgg16", 48, 16)
    shown = [i for i, op in enumerate(zf.ops[: zf.switch]) if op.kind != "point"]
    k = 88 // 8  # position index of the square at (88, 88)

    fig = plt.figure(figsize=(11, 5.6))
    grid = fig.add_gridspec(2, len(shown) + 1, height_ratios=[1, 1.35])
    ax = fig.add_subplot(grid[0, 0])
    ax.add_patch(Rectangle((0, 0), 224, 224, color="0.85"))
    ax.add_patch(Rectangle((88, 88), 48, 48, color="tab:red"))
    ax.set_title("image 224²\nsquare 48²", fontsize=8)
    for n, i in enumerate(shown):
        _, h, w = zf.chain.shapes[i + 1]
        r0, rl = _window(zf.plan.rows, i, k)
        c0, cl = _window(zf.plan.cols, i, k)
        a = fig.add_subplot(grid[0, n + 1])
        a.add_patch(Rectangle((0, 0), w, h, color="0.85"))
        a.add_patch(Rectangle((c0, r0), cl, rl, color="tab:red"))
        a.set_title(f"{zf.ops[i].name} {h}²\nwindow {rl}×{cl}", fontsize=8)
        a.set_xlim(0, w)
        a.set_ylim(h, 0)
    for a in fig.axes:
        a.set_aspect("equal")
        a.set_xticks([])
        a.set_yticks([])
    ax.set_xlim(0, 224)
    ax.set_ylim(224, 0)

    for col, (scorer, label) in enumerate([(zf, "zfnet, 48 / 8"), (vgg, "vgg16, 48 / 16")]):
        costs = _incremental._layer_costs(scorer.chain, scorer.plan.rows, scorer.plan.cols, True)
        names, full, win, run = [], [], [], []
        for i, op in enumerate(scorer.ops):
            if op.kind != "conv":
                continue
            windowed = i < scorer.switch
            names.append(f"features.{op.name}" if op.name.isdigit() else op.name)
            full.append(costs[i][3] / 1e6)
            win.append((costs[i][2] if windowed else costs[i][3]) / 1e6)
            run.append((costs[i][4] if windowed else costs[i][3]) / 1e6)
        names.append("classifier")
        rest = scorer.chain.rest_macs / 1e6
        full.append(rest)
        win.append(rest)
        run.append(rest)
        half = (len(shown) + 1) // 2
        a = fig.add_subplot(grid[1, col * half: (col + 1) * half] if col == 0
                            else grid[1, half:])
        x = torch.arange(len(names)).float()
        a.bar(x - 0.27, full, 0.27, label="full forward", color="0.6")
        a.bar(x, win, 0.27, label="windows, direct", color="tab:orange")
        a.bar(x + 0.27, run, 0.27, label="windows, as run", color="tab:red")
        a.set_xticks(x.tolist(), names, rotation=60, fontsize=7)
        a.tick_params(axis="y", labelsize=7)
        p_ = scorer.plan
        a.set_title(f"{label}: {p_.macs_full / 1e6:,.0f} M → {p_.macs_incremental / 1e6:,.0f} M "
                    f"(direct) → {p_.macs_run / 1e6:,.0f} M (as run) per occluded image",
                    fontsize=8)
        a.set_ylabel("M multiply-adds", fontsize=8)
        if col == 0:
            a.legend(fontsize=7)
    fig.suptitle("Incremental occlusion: the window each layer recomputes (top, zfnet) and the "
                 "arithmetic (bottom)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
