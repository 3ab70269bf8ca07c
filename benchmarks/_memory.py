"""Peak memory of a piece of work, measured in a fresh process (Linux)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb(setup: str, work: str) -> tuple[float, float]:
    """RSS (MiB) of a fresh Python process after ``setup``, and its peak while it runs ``work``.

    Both are source code, run with the repository root on ``sys.path`` and torch at this
    process's thread count. The peak is reset after ``setup`` (``/proc/self/clear_refs``), so
    that imports and loading do not hide what ``work`` itself holds.

    Example:
        >>> peak_rss_mb("import torch", "x = torch.zeros(2**27)")  # doctest: +SKIP
        (310.2, 1334.5)
    """
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        f"{setup}\n"
        "status = lambda key: int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1])\n"
        "before = status('VmRSS:')\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # resets VmHWM, the peak RSS\n"
        f"{work}\n"
        "print(before, status('VmHWM:'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, peak = (int(v) / 1024.0 for v in out.stdout.strip().splitlines()[-1].split())  # KiB
    return before, peak
