"""Deconvnet projections per second for the paper's Fig. 2 job, against Captum and plain autograd.

Fig. 2 projects the top 9 activations of every feature map of a layer: 9 × 256 projections for
conv5. Each method below projects the same images (9 per feature map; random images here: the
speed does not depend on which images are the top 9) and returns one projection per image:

- ``zflight``: ``DeconvNet(model).project(x, layer=L, channels=c, mode="max")``: one forward
  that stops at L and one backward per chunk of ``--batch-size`` images.
- ``zflight_per_map``: the same ``project`` called once per feature map on its 9 images (the
  early stop without the batching).
- ``captum``: what Captum users write: one ``NeuronDeconvolution(model, L).attribute`` call per
  feature map on its 9 images, the selector taking the map's maximum. Each call runs the whole
  model forward.
- ``plain``: the floor: plain autograd, forward to L (stopped there, as zflight) and backward of
  the same signal, same chunks, no deconvnet rule.

Every (method, repeat) runs in a fresh subprocess, methods interleaved across repeats so that
noise from a shared machine hits all alike; the median time is reported. Peak memory is what
the run adds on top of the model and inputs: ``torch.cuda.max_memory_allocated`` on a GPU, the
resident set size sampled every 2 ms on a CPU (Linux only).

    python benchmarks/deconv.py                               # CPU: AlexNet conv5, 64 px
    python benchmarks/deconv.py --methods zflight zflight_per_map captum plain
    python benchmarks/deconv.py --device cuda --size 224      # the paper's size on a GPU
    python benchmarks/deconv.py --model zfnet --layer conv5 --size 224 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from datetime import datetime, timezone

import torch

METHODS = ("zflight", "zflight_per_map", "captum", "plain")


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="alexnet",
                   help="zfnet, alexnet_zf or a torchvision model name (default: alexnet)")
    p.add_argument("--layer", default=None,
                   help="layer to project from (default: conv5: features.10 for torchvision "
                        "alexnet, conv5 for zflight's networks)")
    p.add_argument("--size", type=int, default=64, help="image height and width (default: 64)")
    p.add_argument("--topk", type=int, default=9, help="projections per feature map (default: 9)")
    p.add_argument("--channels", type=int, default=None,
                   help="feature maps to project (default: all of the layer's)")
    p.add_argument("--batch-size", type=int, default=576,
                   help="images per forward/backward for zflight and plain (default: 576)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--repeats", type=int, default=1, help="runs of each method (default: 1)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["zflight", "captum", "plain"],
                   help="methods to time (default: zflight captum plain)")
    p.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)  # one run, JSON out
    return p.parse_args(argv)


def _build(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from zflight.models import build_model

    torch.manual_seed(0)
    kwargs = {"image_size": args.size} if args.model in ("zfnet", "zfnet_b", "alexnet_zf") else {}
    model = build_model(args.model, num_classes=1000, **kwargs)
    layer = args.layer or ("features.10" if args.model == "alexnet" else "conv5")
    dtype = getattr(torch, args.dtype)
    return model.to(args.device, dtype).eval(), layer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Peak memory added during a block: CUDA allocator stats, or sampled RSS on a CPU."""

    def __init__(self, device: str) -> None:
        self.device, self.peak_bytes = device, None
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> _PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._base = self._peak = self._rss()

            def sample() -> None:
                while not self._stop.wait(0.002):
                    self._peak = max(self._peak, self._rss())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, self._rss()) - self._base


def _run_zflight(model, layer, x, chans, args) -> torch.Tensor:
    from zflight import DeconvNet

    return DeconvNet(model).project(x, layer=layer, channels=chans, mode="max",
                                    batch_size=args.batch_size)


def _run_zflight_per_map(model, layer, x, chans, args) -> torch.Tensor:
    from zflight import DeconvNet

    dn = DeconvNet(model)
    out = torch.empty_like(x)
    k = args.topk
    for i in range(0, len(x), k):
        out[i : i + k] = dn.project(x[i : i + k], layer=layer, channels=int(chans[i]), mode="max")
    return out


def _run_captum(model, layer, x, chans, args) -> torch.Tensor:
    from captum.attr import NeuronDeconvolution

    module = dict(model.named_modules())[layer]
    out = torch.empty_like(x)
    k = args.topk
    for i in range(0, len(x), k):
        c = int(chans[i])
        nd = NeuronDeconvolution(model, module)
        out[i : i + k] = nd.attribute(x[i : i + k], lambda o, c=c: o[:, c].flatten(1).amax(1))
    return out


def _run_plain(model, layer, x, chans, args) -> torch.Tensor:
    from zflight.attribution._layers import forward_to

    module = dict(model.named_modules())[layer]
    out = torch.empty_like(x)
    for start in range(0, len(x), args.batch_size):
        stop = min(start + args.batch_size, len(x))
        xb = x[start:stop].detach().requires_grad_(True)
        with torch.enable_grad():
            act = forward_to(model, module, xb)
            rows = torch.arange(stop - start, device=x.device)
            maps = act.detach()[rows, chans[start:stop]].flatten(1)
            where = maps.argmax(1)
            signal = torch.zeros(act.shape[0], act.shape[1], maps.shape[1], dtype=act.dtype,
                                 device=act.device)
            signal[rows, chans[start:stop], where] = maps[rows, where]
            (out[start:stop],) = torch.autograd.grad(act, xb, signal.view(act.shape))
    return out


def _one_run(args: argparse.Namespace) -> dict:
    warnings.filterwarnings("ignore")  # Captum warns about its hooks on every call
    from zflight.attribution._layers import resolve_layer

    model, layer = _build(args)
    layer, module = resolve_layer(model, layer)
    with torch.no_grad():
        from zflight.attribution._layers import forward_to

        probe = forward_to(model, module, torch.zeros(1, 3, args.size, args.size,
                                                      device=args.device,
                                                      dtype=getattr(torch, args.dtype)))
    n_channels = args.channels or probe.shape[1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.topk * n_channels, 3, args.size, args.size, generator=g)
    x = x.to(args.device, getattr(torch, args.dtype))
    chans = torch.arange(n_channels).repeat_interleave(args.topk).to(args.device)
    run = {"zflight": _run_zflight, "zflight_per_map": _run_zflight_per_map,
           "captum": _run_captum, "plain": _run_plain}[args.only]
    # Warm-up on one feature map: allocator, kernels, lazy imports.
    run(model, layer, x[: args.topk], chans[: args.topk], args)
    _sync(args.device)
    with _PeakMemory(args.device) as mem:
        start = time.perf_counter()
        run(model, layer, x, chans, args)
        _sync(args.device)
        seconds = time.perf_counter() - start
    return {"method": args.only, "projections": len(x), "seconds": seconds,
            "peak_bytes": mem.peak_bytes, "layer": layer, "channels": n_channels}


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.only:
        print(json.dumps(_one_run(args)))
        return
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    methods = [m for m in METHODS if m in args.methods]
    if "zflight" not in methods:
        sys.exit("--methods must include zflight (the other rows are compared with it)")
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(args.repeats):
        for method in methods:
            cmd = [sys.executable, __file__, *passed, "--only", method]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{method} failed:\n{done.stderr}")
            results[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[method][-1]
            print(f"# repeat {rep + 1}/{args.repeats} {method}: {r['seconds']:.2f} s",
                  file=sys.stderr)

    import captum

    first = results["zflight"][0]
    secs = {m: statistics.median(r["seconds"] for r in results[m]) for m in methods}
    peak = {m: max((r["peak_bytes"] or 0) for r in results[m]) for m in methods}
    n = first["projections"]
    print(f"Deconvnet projections, Fig. 2 job: top-{args.topk} × {first['channels']} maps of "
          f"{args.model} {first['layer']} ({n} projections), {args.size} px, {args.dtype}")
    print(f"machine: {_machine(args.device)}")
    print(f"torch {torch.__version__}, captum {captum.__version__}, Python "
          f"{platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"median of {args.repeats} runs each; zflight/plain batch size {args.batch_size}, "
          f"Captum one call per map ({args.topk} images)")
    print()
    print("| method | time (s) | projections/s | its time / zflight's | peak memory added (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for m in methods:
        speedup = secs[m] / secs["zflight"]
        mem = f"{peak[m] / 2**20:.0f}" if results[m][0]["peak_bytes"] is not None else "n/a"
        label = {"zflight": "zflight `project`, batched",
                 "zflight_per_map": "zflight `project`, one call per map",
                 "captum": "Captum `NeuronDeconvolution`, one call per map",
                 "plain": "plain autograd to the layer"}[m]
        print(f"| {label} | {secs[m]:.2f} | {n / secs[m]:.0f} | {speedup:.2f}× | {mem} |")


if __name__ == "__main__":
    main()
