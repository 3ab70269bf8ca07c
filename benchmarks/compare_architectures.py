"""Train the paper's two architectures with the quickstart recipe, then compare them (Fig. 6).

One command: ``alexnet_zf`` (the paper's replication of Krizhevsky et al.: conv1 11×11 stride
4, conv2 stride 1) and ``zfnet`` (conv1 7×7 stride 2, conv2 stride 2) are each trained with
``configs/quickstart.yaml`` (same data, optimizer, schedule, seed; only ``model.arch`` differs),
then ``python -m zflight compare`` writes the side-by-side figure and the numbers.

    python benchmarks/compare_architectures.py                  # the real run (minutes per model on a CPU)
    python benchmarks/compare_architectures.py --toy --out /tmp/cmp   # seconds: checks the plumbing only

Anything after ``--`` goes to both ``fit`` runs (e.g. ``-- --trainer.max_epochs=10``). Output:
``<root>/<arch>/version_*/`` (checkpoints, TensorBoard) and ``<out>/compare.{png,json}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ARCHS = ("alexnet_zf", "zfnet")  # the paper's order: the baseline first

# Seconds instead of minutes: a model too small and a data set too tiny to learn anything.
TOY = [
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--model.width=0.125",
    "--data.init_args.train_size=32",
    "--data.init_args.val_size=32",
    "--data.init_args.test_size=16",
    "--data.init_args.batch_size=16",
]


def train(arch: str, root: Path, extra: list[str]) -> Path:
    """Fit ``arch`` with the quickstart config into ``root/arch``; return its ``last.ckpt``."""
    from zflight.cli import main as zflight_main

    zflight_main([
        "fit",
        "--config", str(QUICKSTART),
        f"--model.arch={arch}",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.logger.init_args.name={arch}",
        *extra,
    ])
    versions = sorted((root / arch).glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    if not versions:
        raise SystemExit(f"no run folder under {root / arch}: did training fail?")
    ckpt = versions[-1] / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise SystemExit(f"training {arch} wrote no {ckpt}")
    return ckpt


def main(argv: list[str] | None = None) -> Path:
    """Train both architectures and write the comparison; returns the output folder.

    Example:
        >>> main(["--toy", "--root", "/tmp/runs", "--out", "/tmp/cmp"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/compare", help="where the two training runs go")
    p.add_argument("--out", default="runs/compare/figures", help="where the comparison goes")
    p.add_argument("--toy", action="store_true", help="tiny models and data: a plumbing check")
    p.add_argument("--num_images", type=int, default=256, help="probe images for the numbers")
    args = p.parse_args(argv)
    root = Path(args.root)
    fit_args = (TOY if args.toy else []) + extra
    ckpts = [train(arch, root, fit_args) for arch in ARCHS]

    from zflight.cli.compare import main as compare_main

    return compare_main([
        "--ckpt_path", str(ckpts[0]),
        "--ckpt_path_b", str(ckpts[1]),
        "--out", args.out,
        "--overwrite",
        "--num_images", str(32 if args.toy else args.num_images),
    ])


if __name__ == "__main__":
    main()
