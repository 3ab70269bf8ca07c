"""Speed of zflight's attribution metrics (issue 13 targets), measured once and printed as a table.

(a) pointing game, relevance mass and relevance rank on 1,000 maps of 64x64 (3 channels):
    zflight vs Quantus (``abs=True, normalise=False`` on the same relevance ``r = sum_c |a_c|``),
    time and the largest difference of the scores (the maps are continuous: no ties).
(b) deletion AUC with ``steps=32`` on N images vs the bare batched forwards it needs
    (``N * 33`` perturbed images in batches of ``batch_size``, the images already built).

Usage: ``python benchmarks/evaluation.py [--n-maps 1000] [--n-images 64] [--threads 2]``.
Quantus is optional (``pip install quantus``); without it its columns read "n/a".
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from zflight import zfnet
from zflight.analysis.evaluation import (
    deletion_auc,
    pointing_game,
    relevance,
    relevance_mass,
    relevance_rank,
)


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The fastest of ``repeats`` timed calls (after one warm-up call), and its result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def localization(n: int, repeats: int) -> list[tuple[str, float, float | None, float | None]]:
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(n, 3, 64, 64, generator=gen)
    # Object-like masks: a box of random size and place per image.
    masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    size = torch.randint(8, 40, (n, 2), generator=gen)
    corner = (torch.rand(n, 2, generator=gen) * (64 - size)).long()
    rows, cols = torch.arange(64)[None, :, None], torch.arange(64)[None, None, :]
    masks = (
        (rows >= corner[:, 0, None, None]) & (rows < (corner[:, 0] + size[:, 0])[:, None, None])
        & (cols >= corner[:, 1, None, None]) & (cols < (corner[:, 1] + size[:, 1])[:, None, None])
    )
    try:
        import quantus
    except ImportError:
        quantus = None
    r = relevance(maps).numpy()[:, None]
    s = masks.numpy()[:, None].astype(np.float32)
    x = np.zeros((n, 1, 64, 64), dtype=np.float32)
    y = np.zeros(n, dtype=np.int64)
    rows_out = []
    for name, ours, qname in [
        ("pointing_game", pointing_game, "PointingGame"),
        ("relevance_mass", relevance_mass, "RelevanceMassAccuracy"),
        ("relevance_rank", relevance_rank, "RelevanceRankAccuracy"),
    ]:
        t_ours, v_ours = best_of(lambda: ours(maps, masks), repeats)
        t_q = diff = None
        if quantus is not None:
            metric = getattr(quantus, qname)(abs=True, normalise=False, disable_warnings=True)

            def run() -> np.ndarray:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return np.asarray(
                        metric(model=None, x_batch=x, y_batch=y, a_batch=r, s_batch=s,
                               batch_size=n),
                        dtype=np.float64,
                    )

            t_q, v_q = best_of(run, max(1, repeats // 3))
            diff = float(np.abs(v_q - v_ours.double().numpy()).max())
        rows_out.append((name, t_ours, t_q, diff))
    return rows_out


def deletion(n: int, steps: int, batch_size: int, repeats: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.25, image_size=64, init="kaiming").eval()
    x = torch.randn(n, 3, 64, 64)
    maps = torch.randn(n, 3, 64, 64)
    targets = torch.arange(n) % 10
    t_auc, _ = best_of(
        lambda: deletion_auc(model, x, maps, targets, steps=steps, batch_size=batch_size,
                             progress=False),
        repeats,
    )
    # The bare forwards: the same number of images, the same batch size, already built.
    total = n * (steps + 1)
    images = x.repeat_interleave(steps + 1, dim=0)

    def bare() -> None:
        with torch.no_grad():
            for start in range(0, total, batch_size):
                model(images[start : start + batch_size]).softmax(dim=1)

    t_bare, _ = best_of(bare, repeats)
    return t_auc, t_bare, -(-total // batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-maps", type=int, default=1000)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"\n(a) {args.n_maps} maps of 3x64x64, best of {args.repeats} (Quantus: of "
          f"{max(1, args.repeats // 3)})")
    print("| metric | zflight (s) | Quantus (s) | Quantus / zflight | max abs diff |")
    print("|---|---|---|---|---|")
    for name, t_ours, t_q, diff in localization(args.n_maps, args.repeats):
        q = f"{t_q:.3f}" if t_q is not None else "n/a"
        ratio = f"{t_q / t_ours:.1f}x" if t_q is not None else "n/a"
        d = f"{diff:.1e}" if diff is not None else "n/a"
        print(f"| {name} | {t_ours:.3f} | {q} | {ratio} | {d} |")

    t_auc, t_bare, forwards = deletion(args.n_images, args.steps, args.batch_size, args.repeats)
    print(f"\n(b) deletion AUC, {args.n_images} images 3x64x64, steps={args.steps}, zfnet "
          f"width 0.25, batch_size={args.batch_size} ({forwards} batched forwards)")
    print("| deletion_auc (s) | bare forwards (s) | ratio (target <= 1.5x) |")
    print("|---|---|---|")
    print(f"| {t_auc:.3f} | {t_bare:.3f} | {t_auc / t_bare:.2f}x |")


if __name__ == "__main__":
    main()
