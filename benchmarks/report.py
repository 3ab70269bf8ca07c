"""The unit explorer at real scale: build time, page size and the page's speed in Chromium.

Targets (issue 21):

- torchvision ``resnet18`` (``weights=None``, read back from a state_dict file) on 500 images of
  a class folder at 112 px, all 960 units of ``layer1``..``layer4``: built in <= 5 min on 2 CPU
  cores; ``index.html`` <= 1 MB; from ``file://`` in Chromium, first paint and the opening of any
  unit each <= 1 s (measured here with playwright, on the system's Chromium);
- a small table of how the build time grows with units and images;
- the per-unit projection cost (:meth:`DeconvNet.project`, what the unit pages pay) against a
  plain autograd backward of the same unit's strongest activation to the input (<= 1.2x),
  interleaved, best of ``--repeats``;
- no regression: the quickstart report of all 344 units (``--quickstart CKPT``) <= 30 s.

The class folder is made here: ShapesDataset images upscaled to 112 px, saved as PNGs in one
subfolder per class under ``--work`` (default /tmp/report_bench).

Run:
    python benchmarks/report.py                                  # everything
    python benchmarks/report.py --quickstart runs/quickstart/version_0/checkpoints/last.ckpt
    python benchmarks/report.py --skip_full --skip_growth        # the projection ratio only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Folder(Dataset):
    """The class folder as ``(normalized image, label)``, with ``classes`` and ``denormalize``."""

    def __init__(self, root: Path, limit: int | None = None) -> None:
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.files = [(f, c) for c, name in enumerate(self.classes) for f in sorted((root / name).glob("*.png"))]
        self.files = sorted(self.files, key=lambda fc: fc[0].name)[:limit]
        self.mean = torch.tensor(MEAN)[:, None, None]
        self.std = torch.tensor(STD)[:, None, None]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        path, label = self.files[i]
        x = pil_to_tensor(Image.open(path).convert("RGB")).float() / 255
        return (x - self.mean) / self.std, label

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean).clamp(0, 1)


def make_folder(root: Path, n: int, size: int = 112) -> Path:
    """Write ``n`` ShapesDataset images, upscaled to ``size``, as ``root/<class>/<i>.png``."""
    from PIL import Image

    from zflight.data import ShapesDataset

    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    base = ShapesDataset(n, image_size=64, seed=5)
    for i in range(n):
        x, y = base[i]
        img = base.denormalize(x[None])[0] if hasattr(base, "denormalize") else x
        img = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
        folder = root / str(base.classes[int(y)] if getattr(base, "classes", None) else int(y))
        folder.mkdir(parents=True, exist_ok=True)
        arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"{i:05d}.png")
    return root


def resnet18_from_state_dict(path: Path) -> torch.nn.Module:
    """resnet18 (weights=None) written to ``path`` as a state_dict and read back (no pickled code)."""
    import torchvision

    if not path.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def build(model: torch.nn.Module, data: Dataset, out: Path, units: int | None, occlusion: int = 0) -> float:
    from zflight import build_report

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_report(model, data, out, layers=LAYERS, units=units, occlusion_images=occlusion, progress=False,
                 facts={"source": "torchvision resnet18", "weights": "none (random init), from a state_dict file",
                        "preprocessing": "112 px PNGs, ImageNet mean/std", "classes": "the folder's names"},
                 data_description="a class folder of upscaled shapes")
    return time.perf_counter() - start


def browser_times(site: Path, units: list[str], repeats: int = 3) -> dict[str, Any]:
    """First paint of index.html and the opening of each of ``units`` from file://, in seconds (best of repeats)."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return {"error": "no chromium"}
    first_paint, opened = [], {u: [] for u in units}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((site / "index.html").as_uri())
            page.wait_for_load_state("load")
            # First paint where the browser records it; headless Chromium may not, and then the
            # moment the page is interactive (the script's "zflight-ready" mark) stands in.
            fp = page.evaluate("""() => {
                const p = performance.getEntriesByType('paint').map(e => e.startTime);
                const r = performance.getEntriesByName('zflight-ready').map(e => e.startTime);
                return p.length ? Math.min(...p) : r[0];
            }""")
            first_paint.append(fp / 1000)
            for key in units:
                # From the click (hash change) to the unit's page shown, its layer file loaded
                # if it was not yet, and its panel picture decoded.
                t = page.evaluate("""key => new Promise(done => {
                    const t0 = performance.now();
                    location.hash = key;
                    (function wait() {
                      const a = document.querySelector('#unit article.current');
                      const img = a && a.id === key && a.querySelector('img.panel');
                      if (img && img.complete && img.naturalWidth) { done(performance.now() - t0); }
                      else { requestAnimationFrame(wait); }
                    })();
                })""", key)
                opened[key].append(t / 1000)
            page.close()
        browser.close()
    return {"first_paint_s": min(first_paint), **{f"open {k} s": min(v) for k, v in opened.items()}}


def resnet50_sized_site(out: Path) -> Path:
    """A page of ResNet-50's 3,840 units (256 + 512 + 1024 + 2048) from made-up numbers: the page's own cost.

    Every unit has a label, 9 activations and a 24-bin histogram, and shares one panel picture,
    so the site is built in seconds and what is timed is the page, not the model.
    """
    from zflight.figures import save_png
    from zflight.figures.report import LayerEntry, ReportContent, UnitEntry, write_site

    shutil.rmtree(out, ignore_errors=True)
    save_png(torch.rand(3, 100, 203), out / "units" / "panel.png")
    g = torch.Generator().manual_seed(0)
    concepts = ["texture/striped", "color/red", "object/ring", "part/rim", "scene/sky", "material/wood"]
    layers = []
    for name, n in (("layer1", 256), ("layer2", 512), ("layer3", 1024), ("layer4", 2048)):
        save_png(torch.rand(3, 32, 32 * n, generator=g), out / "units" / name / "top1.png")
        units = [UnitEntry(layer=name, unit=u, panel="units/panel.png",
                           values=sorted(torch.rand(9, generator=g).tolist(), reverse=True),
                           images=torch.randint(0, 5000, (9,), generator=g).tolist(),
                           histogram=torch.randint(0, 400, (24,), generator=g).tolist(), histogram_range=(0.0, 9.5),
                           label=concepts[u % len(concepts)], iou=0.05, detector=bool(u % 2))
                 for u in range(n)]
        layers.append(LayerEntry(name=name, module=name, kind="Sequential", output=(n, 7, 7), parameters=0,
                                 receptive_field=None, units=units, sprite=f"units/{name}/top1.png"))
    content = ReportContent(title="ResNet-50-sized page", checkpoint="", model=[("model", "made-up numbers")],
                            parameters=25_557_032, facts=[], layers=layers, mined="5000 images", dissection="made up")
    write_site(content, out)
    return out


def projection_ratio(model: torch.nn.Module, data: Dataset, repeats: int) -> dict[str, float]:
    """DeconvNet.project of one unit per image against a plain autograd backward of the same activation."""
    from zflight.attribution import DeconvNet
    from zflight.attribution._layers import forward_to, resolve_layer

    images = torch.stack([data[i][0] for i in range(32)])
    result = {}
    for layer in ("layer1", "layer4"):
        module = resolve_layer(model, layer)[1]
        chans = torch.arange(32) % 64
        best = {"deconvnet": float("inf"), "autograd": float("inf")}
        for _ in range(repeats):
            t = time.perf_counter()
            DeconvNet(model).project(images, layer=layer, channels=chans, mode="max", batch_size=32)
            best["deconvnet"] = min(best["deconvnet"], time.perf_counter() - t)
            t = time.perf_counter()
            x = images.clone().requires_grad_()
            out = forward_to(model, module, x)
            # The input's gradient only (autograd.grad skips the parameters' gradients).
            torch.autograd.grad(out[torch.arange(32), chans].flatten(1).amax(1).sum(), x)
            best["autograd"] = min(best["autograd"], time.perf_counter() - t)
        result[f"{layer} deconvnet s/unit"] = best["deconvnet"] / 32
        result[f"{layer} autograd s/unit"] = best["autograd"] / 32
        result[f"{layer} ratio"] = best["deconvnet"] / best["autograd"]
    return result


def quickstart(ckpt: str, work: Path) -> dict[str, Any]:
    out = work / "quickstart_site"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zflight", "report", "--ckpt_path", ckpt, "--out", str(out)],
                   check=True, capture_output=True, text=True)
    return {"quickstart report s": time.perf_counter() - start,
            "quickstart units": sum(len(layer["units"]) for layer in json.loads((out / "report.json").read_text())["layers"]),
            "quickstart index.html kB": (out / "index.html").stat().st_size / 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/report_bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quickstart", default=None, help="a quickstart checkpoint: time its full report")
    p.add_argument("--skip_full", action="store_true")
    p.add_argument("--skip_growth", action="store_true")
    p.add_argument("--skip_ratio", action="store_true")
    p.add_argument("--resnet50_page", action="store_true",
                   help="only time a page of ResNet-50's 3,840 units made from made-up numbers")
    p.add_argument("--site", default=None, help="only time an explorer already built (e.g. --work's resnet18_site)")
    args = p.parse_args()
    if args.resnet50_page:
        site = resnet50_sized_site(Path(args.work) / "resnet50_page")
        print(json.dumps({"index.html kB": (site / "index.html").stat().st_size / 1000,
                          "largest units/<layer>.js kB": max(f.stat().st_size for f in (site / "units").glob("*.js")) / 1000,
                          **browser_times(site, ["layer1/0", "layer4/2047", "layer3/1023"])}, indent=1))
        return
    if args.site:
        print(json.dumps(browser_times(Path(args.site), ["layer1/0", "layer4/511", "layer2/127", "layer3/255"]),
                         indent=1))
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = make_folder(work / "images", 500)
    model = resnet18_from_state_dict(work / "resnet18.pt")
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, torch.set_num_threads({args.threads})",
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not args.skip_ratio:
        results.update(projection_ratio(model, _Folder(folder), args.repeats))
        print(json.dumps(results, indent=1), flush=True)
    if args.quickstart:
        results.update(quickstart(args.quickstart, work))
        print(json.dumps(results, indent=1), flush=True)
    if not args.skip_growth:
        growth = {}
        for units, n in ((8, 100), (8, 500), (32, 100), (32, 500)):
            growth[f"{4 * units} units, {n} images"] = round(build(model, _Folder(folder, n), work / "growth", units), 1)
            print(growth, flush=True)
        results["growth s"] = growth
    if not args.skip_full:
        site = work / "resnet18_site"
        results["full build s (960 units, 500 images, 4 occlusion images)"] = build(model, _Folder(folder), site, None, 4)
        results["index.html kB"] = (site / "index.html").stat().st_size / 1000
        results["largest units/<layer>.js kB"] = max(f.stat().st_size for f in (site / "units").glob("*.js")) / 1000
        results["stages s"] = json.loads((site / "report.json").read_text())["build_seconds"]
        print(json.dumps(results, indent=1), flush=True)
        results.update(browser_times(site, ["layer1/0", "layer4/511", "layer2/127", "layer3/255"]))
    print(json.dumps(results, indent=1), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
