"""Screenshots of a built unit explorer for docs/report.md, and its time to interactive.

Usage (from the repository root, after building a report)::

    OMP_NUM_THREADS=1 python -m zflight report \\
        --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --out /tmp/quickstart_report \\
        --log_dir runs/quickstart/version_0
    python docs/scripts/make_report_screenshots.py /tmp/quickstart_report [--unit conv5/6] \\
        [--search ring] [--loads 5]

Opens ``SITE/index.html`` from ``file://`` in the system's headless Chromium (Debian package
``chromium``, driven by playwright with ``executable_path``; no browser is downloaded) and writes
into ``docs/images/``:

- ``report_unit.png``: the page at ``#<unit>`` (the overview's strips on the left, the unit on
  the right); by default the conv5 unit with a feature-evolution strip and the largest IoU;
- ``report_search.png``: the strips after typing ``--search`` in the search box (default: the
  most common dissection label of conv5);
- ``report_image.png``: the first validation image's occlusion figure and explanation scores.

Each is a 256-colour PNG at most 1000 px wide. Then it loads the page ``--loads`` times, each in
a fresh browser context (nothing cached), and prints the browser's own timings
(``performance``: ``domInteractive``, the end of ``DOMContentLoaded``, the script's
``zflight-ready`` mark, the end of ``load``) as medians and maxima in milliseconds, the numbers
docs/benchmarks.md quotes. Any console error or request outside ``file://`` is an error.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
from collections import Counter
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "images"
TIMINGS = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  const ready = performance.getEntriesByName("zflight-ready")[0];
  return {domInteractive: n.domInteractive, domContentLoaded: n.domContentLoadedEventEnd,
          ready: ready ? ready.startTime : null, load: n.loadEventEnd};
}"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("site", type=Path, help="a folder written by `python -m zflight report`")
    p.add_argument("--unit", help="the unit shown in report_unit.png (layer/unit)")
    p.add_argument("--search", help="the search typed for report_search.png")
    p.add_argument("--loads", type=int, default=5, help="page loads timed (default 5)")
    p.add_argument("--out", type=Path, default=OUT, help="folder of the PNGs (default docs/images)")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    data = json.loads((args.site / "report.json").read_text())
    units = [u for layer in data["layers"] for u in layer["units"]]
    unit = args.unit or _default_unit(units)
    search = args.search or Counter(u["label"] for u in units if u["layer"] == "conv5" and u["label"]).most_common(1)[0][0]
    index = (args.site / "index.html").resolve().as_uri()
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("no chromium found: apt-get install chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page, problems = _page(browser)
        page.goto(f"{index}#{unit}")
        page.wait_for_load_state("load")
        page.wait_for_function("[...document.querySelectorAll('article.unit.current img')].every(i => i.complete)")
        _save(page.screenshot(), args.out / "report_unit.png")
        page.fill("#search", search)
        page.evaluate("window.scrollTo(0, document.getElementById('units').offsetTop - 50)")
        _save(page.screenshot(), args.out / "report_search.png")
        page.fill("#search", "")
        image = page.locator("#val-0")
        image.scroll_into_view_if_needed()
        page.wait_for_function("document.querySelector('#val-0 img').complete")
        _save(image.screenshot(), args.out / "report_image.png")
        timings = []
        for _ in range(args.loads):
            fresh, more = _page(browser)
            fresh.goto(index)
            fresh.wait_for_load_state("load")
            timings.append(fresh.evaluate(TIMINGS))
            problems += more
            fresh.context.close()
        browser.close()
    if problems:
        raise SystemExit(f"the page misbehaved: {problems[:5]}")
    print(f"unit {unit}, search {search!r}; {len(units)} units")
    for key in ("domInteractive", "domContentLoaded", "ready", "load"):
        values = [t[key] for t in timings if t[key] is not None]
        print(f"{key:>16}: median {statistics.median(values):7.1f} ms, max {max(values):7.1f} ms over {len(values)} loads")


def _default_unit(units: list[dict]) -> str:
    """The conv5 unit with an evolution strip and the largest IoU (else the first conv5 unit)."""
    tracked = [u for u in units if u["layer"] == "conv5" and u["evolution"]] or [units[0]]
    best = max(tracked, key=lambda u: u["iou"] or 0.0)
    return f"{best['layer']}/{best['unit']}"


def _page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: problems.append(r.url) if not r.url.startswith("file://") else None)
    return page, problems


def _save(png: bytes, path: Path, width: int = 1000) -> None:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img = img.quantize(256, method=Image.Quantize.MEDIANCUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
