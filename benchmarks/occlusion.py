"""Occlusion maps per second: Captum, plain batched full forwards, zflight's incremental inference.

Issue 6's job: a 48-pixel gray square over 224×224 images, for

- ``zfnet`` at stride 8 (23 × 23 = 529 positions),
- torchvision ``vgg16`` at stride 16 (12 × 12 = 144 positions),
- torchvision ``alexnet`` at stride 8 (529 positions),

random weights (speed does not depend on them) and random images. Every method scores the same
images at the same positions with the same number of occluded images per forward pass
(``--batch-size``), side by side in one process, methods interleaved per repeat so that load from
other processes on a shared machine hits all of them alike:

- ``captum``: ``captum.attr.Occlusion`` on the softmax of the model, ``sliding_window_shapes=
  (3, size, size)``, ``strides=(3, stride, stride)``, ``perturbations_per_eval=batch``.
- ``full``: ``occlusion_maps(..., incremental=False)``: one full forward per occluded image.
- ``incremental``: ``occlusion_maps(..., incremental=True)``: exact incremental inference
  (``windows`` per device: per-class windows on a CPU, one window size per layer on a GPU;
  ``--windows`` forces one). On the CPU the windows of 3x3 convolutions with >= 256 channels
  run as Winograd convolutions.
- ``direct``: the same incremental path with every window run as a direct convolution (no
  Winograd): what the windows alone give.

It also counts the multiply-adds (convolutions and linear layers) of one occluded image each
way, from the plan the incremental path runs (windows counted as direct convolutions, and as
run, with Winograd), and prints how close each measured speed-up comes to the counted one. ``--out`` writes the table as Markdown.

    python benchmarks/occlusion.py                                # CPU, all three models
    python benchmarks/occlusion.py --models zfnet --images 2 --repeats 3
    python benchmarks/occlusion.py --device cuda --out docs/benchmarks-occlusion-gpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

METHODS = ("captum", "full", "direct", "incremental")
JOBS = {  # model: (square size, stride)
    "zfnet": (48, 8),
    "vgg16": (48, 16),
    "alexnet": (48, 8),
}


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=1, help="images per map set (default: 1)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="occluded images per forward pass, every method (default: 64)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method (median)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--windows", choices=["exact", "fixed"], default=None,
                   help="force the incremental path's window layout (default: per device)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--out", default=None, help="write the Markdown table here")
    return p.parse_args(argv)


def _build(name: str, image_size: int, device: str) -> torch.nn.Module:
    from zflight.models import build_model

    torch.manual_seed(0)
    kwargs = {"image_size": image_size} if name == "zfnet" else {}
    return build_model(name, num_classes=1000, **kwargs).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _run(method: str, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
         size: int, stride: int, batch: int) -> torch.Tensor:
    """One occlusion job; returns the target probability map ``[N, rows, cols]``."""
    from zflight.attribution.occlusion import occlusion_maps

    if method == "captum":
        from captum.attr import Occlusion

        softmax = lambda x: torch.softmax(model(x), dim=1)  # noqa: E731
        with torch.no_grad():
            attr = Occlusion(softmax).attribute(
                images, sliding_window_shapes=(images.shape[1], size, size),
                strides=(images.shape[1], stride, stride), baselines=0.0, target=targets,
                perturbations_per_eval=batch, show_progress=False,
            )
        return attr
    from zflight.attribution import _incremental

    default = _incremental._default_winograd
    if method == "direct":  # benchmark-only: the windows without Winograd
        _incremental._default_winograd = lambda device: False
    try:
        maps = occlusion_maps(model, images, targets, size=size, stride=stride,
                              batch_size=batch, incremental=method != "full", progress=False)
    finally:
        _incremental._default_winograd = default
    return maps.prob


def _machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        desc += f", {torch.cuda.get_device_name(device)}"
    try:
        desc += ", load average before the run {:.1f}".format(os.getloadavg()[0])
    except OSError:
        pass
    return desc


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.windows:
        from zflight.attribution import _incremental

        _incremental._default_windows = lambda device: args.windows  # benchmark-only override
    from zflight.attribution import _incremental

    machine = _machine(args.device)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for name in args.models:
        size, stride = JOBS[name]
        model = _build(name, args.image_size, args.device)
        torch.manual_seed(1)
        images = torch.randn(args.images, 3, args.image_size, args.image_size, device=args.device)
        with torch.no_grad():
            targets = model(images).argmax(dim=1)
            scorer = _incremental.make_scorer(
                model, images, size=size, stride=stride, probe_module=None, incremental=True,
                approximate=None)
        plan, n_ops = scorer.plan, len(scorer.ops)
        del scorer  # only its plan is needed: do not hold its cache and weights during the runs
        positions = ((args.image_size - size) // stride + 1) ** 2
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        outputs: dict[str, torch.Tensor] = {}
        # Warm-up on a small job (allocator, kernel selection), not timed.
        for m in args.methods:
            _run(m, model, images[:1], targets[:1], args.image_size // 2, args.image_size // 2,
                 args.batch_size)
        for _ in range(args.repeats):
            for m in args.methods:
                _sync(args.device)
                t0 = time.perf_counter()
                outputs[m] = _run(m, model, images, targets, size, stride, args.batch_size)
                _sync(args.device)
                times[m].append(time.perf_counter() - t0)
                print(f"{name:8s} {m:12s} {times[m][-1]:8.2f} s", flush=True)
        err = float("nan")
        if "full" in outputs:
            full = outputs["full"]
            errs = [float(((outputs[m] - full).abs() / full.abs()).max())
                    for m in ("direct", "incremental") if m in outputs]
            err = max(errs, default=float("nan"))
        med = {m: statistics.median(t) for m, t in times.items()}
        rows.append(dict(model=name, size=size, stride=stride, positions=positions,
                         images=args.images, med=med, macs_full=plan.macs_full,
                         macs_inc=plan.macs_incremental, macs_run=plan.macs_run,
                         switch=plan.switch,
                         n_ops=n_ops, err=err,
                         windows="exact" if plan.exact_windows else "fixed"))
    table = _table(rows, args, machine, date)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


def _table(rows: list[dict], args: argparse.Namespace, machine: str, date: str) -> str:
    lines = [
        f"Machine: {machine}. Date: {date}. Device: {args.device}. Batch: {args.batch_size} "
        f"occluded images per forward; {args.images} image(s) of {args.image_size}² px; median of "
        f"{args.repeats} run(s) per method, methods interleaved in one process.",
        "",
        "| model | square / stride (positions) | Captum s | full s | direct s | incremental s "
        "| incr. vs Captum | incr. vs full | direct vs full "
        "| MACs full / direct windows (counted ratio) | as run, Winograd (counted ratio) "
        "| measured / counted: direct, incr. | max rel. error vs full |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in rows:
        med = r["med"]
        n = r["positions"] * r["images"]
        counted = r["macs_full"] / r["macs_inc"]
        counted_run = r["macs_full"] / r["macs_run"]
        cap, full = med.get("captum", nan), med.get("full", nan)
        direct, inc = med.get("direct", nan), med.get("incremental", nan)
        lines.append(
            f"| {r['model']} | {r['size']} / {r['stride']} ({r['positions']}) | {cap:.2f} "
            f"| {full:.2f} | {direct:.2f} | {inc:.2f} | **{cap / inc:.2f}×** | {full / inc:.2f}× "
            f"| {full / direct:.2f}× "
            f"| {r['macs_full'] * n / 1e9:.1f} G / {r['macs_inc'] * n / 1e9:.1f} G "
            f"({counted:.2f}×) | {r['macs_run'] * n / 1e9:.1f} G ({counted_run:.2f}×) "
            f"| {full / direct / counted:.2f}, {full / inc / counted_run:.2f} | {r['err']:.1e} |"
        )
    lines += [
        "",
        "MACs: multiply-adds of convolutions and linear layers for all occluded images of the "
        "map set (Captum runs the same full forwards as `full`); `direct` counts every window "
        "as a direct convolution, `as run` counts the Winograd layers by their products (16 per "
        "2×2 outputs instead of 36). The incremental path's "
        f"windows: {rows[0]['windows'] if rows else ''}; it switches to full maps at op "
        + ", ".join(f"{r['model']}: {r['switch']}/{r['n_ops']}" for r in rows) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
