"""``python -m zflight pack``: pack an ImageNet-style folder for :class:`~zflight.data.PackedImageNetDataModule`.

Usage::

    python -m zflight pack --src /data/imagenet --dst /data/imagenet-zf [--size 256] [--workers N]
        [--chunk-size 1024] [--skip-corrupt] [--verify] [--no-progress]

What a pack holds, how it resumes and how unreadable files are handled: :mod:`zflight.data.pack`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zflight.cli._common import ArgumentParser, subcommand_parser
from zflight.data.datamodules import UnreadableImageError
from zflight.data.pack import PackVerificationError, pack, summary, verify

__all__ = ["main"]


def _parser() -> ArgumentParser:
    parser = subcommand_parser(
        "pack",
        "Pack an ImageNet-style folder (train/<class>/*.JPEG, val/<class>/*.JPEG) into uint8 arrays "
        "for PackedImageNetDataModule: shorter side to --size, centre square crop. Resumable: rerun the same "
        "command after an interruption. A finished pack is verified and left alone.",
    )
    parser.add_argument("--src", help="ImageNet-style folder holding train/ (and val/)")
    parser.add_argument("--dst", required=True, help="folder for the pack")
    parser.add_argument("--size", type=int, default=256, help="side of the stored square images (default 256)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all CPUs)")
    parser.add_argument(
        "--chunk-size", type=int, default=1024, help="images per chunk (unit of work, resume, checksum)"
    )
    parser.add_argument(
        "--skip-corrupt", action="store_true", help="finish without unreadable files (listed in the manifest)"
    )
    parser.add_argument("--verify", action="store_true", help="only verify the finished pack in --dst")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``python -m zflight pack``.

    Args:
        argv: the arguments after ``pack`` (``sys.argv[2:]`` when None).

    Returns:
        The manifest of the finished (or verified) pack.

    Raises:
        SystemExit: status 2 with one ``error:`` line on bad arguments or a mismatching
            ``--dst``; status 1 with the list of unreadable files, or of a pack's differences.

    Example:
        >>> main(["--src", "/data/imagenet", "--dst", "/data/imagenet-zf"])  # doctest: +SKIP
    """
    parser = _parser()
    args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    try:
        if args.verify:
            manifest = verify(args.dst, workers=args.workers, progress=not args.no_progress)
            print(summary(Path(args.dst).expanduser().absolute(), manifest))
            return manifest
        if args.src is None and not (Path(args.dst).expanduser() / "manifest.json").is_file():
            parser.error("--src is required to make a pack")
        return pack(
            args.src or ".",
            args.dst,
            size=args.size,
            workers=args.workers,
            skip_corrupt=args.skip_corrupt,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
        )
    except (UnreadableImageError, PackVerificationError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        parser.error(str(e))
