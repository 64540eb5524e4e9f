"""``lesionlab corruptions list | gallery``: what each acquisition corruption does, and how an image looks under it.

Argument parsing and printing only; the corruptions are :mod:`lesionlab.data.corruptions`. Scoring a run on the
corrupted test split is ``lesionlab evaluate RUN --corruptions all``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """examples:
  lesionlab corruptions list
  lesionlab corruptions gallery ../shared/data/ham10000-64/images/ISIC_0024306.jpg --size 128 --out gallery.png
  lesionlab corruptions gallery lesion.jpg --corruptions motion_blur,black_corner --severities 1,3,5

The corruptions and their five severities are MedMNIST-C's for dermatoscopy (Di Salvo et al., arXiv:2406.17536,
2024), implemented in lesionlab and scaled to the image size. They make the *corrupted* test split, which is
unrelated to the *corrected* DermaMNIST-C split.
"""


def register(subparsers: Any) -> None:
    """Add ``corruptions`` to the ``lesionlab`` command line."""
    parser = subparsers.add_parser("corruptions", help="the fifteen acquisition corruptions: list them, or show an "
                                                       "image under each (gallery)",
                                   description=__doc__.splitlines()[0], epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_subparsers(dest="which", metavar="{list,gallery}", required=True)
    lst = which.add_parser("list", help="name, family, the five severities' parameters and how each scales")
    lst.set_defaults(func=_list)
    gal = which.add_parser("gallery", help="one image under every corruption and severity, as a PNG mosaic")
    gal.add_argument("image", type=Path, help="an image file (JPEG, PNG, ...)")
    gal.add_argument("--size", type=int, default=128,
                     help="resize to this square input size first, as a run would see it (default 128; 0: as is)")
    gal.add_argument("--resize", choices=["square", "aspect"], default="square", help="resize mode (default square)")
    gal.add_argument("--corruptions", default="all", help="'all' or a comma list of names")
    gal.add_argument("--severities", default="1-5", help="severities, e.g. 1-5 or 1,3,5")
    gal.add_argument("--seed", type=int, default=0)
    gal.add_argument("--scale", type=int, default=0, help="enlarge each tile (0: 2x below 96 px, else 1x)")
    gal.add_argument("--out", type=Path, default=Path("corruption_gallery.png"), help="PNG to write")
    gal.set_defaults(func=_gallery)


def _list(args: argparse.Namespace) -> int:
    from lesionlab.core.argparsing import rich_table
    from lesionlab.core.console import make_console
    from lesionlab.data.corruption_ops import REFERENCE_SIZE
    from lesionlab.data.corruptions import CITATION, describe

    columns = ("name", "family", "what", "severities 1-5", "at other sizes")
    table = rich_table(f"Acquisition corruptions (parameters at {REFERENCE_SIZE} px; {CITATION})", columns,
                       left=columns, overflow="fold")
    for c in describe():
        table.add_row(c["name"], c["family"], c["summary"], ", ".join(str(v) for v in c["levels"]), c["scaling"])
    make_console().print(table)
    return 0


def _gallery(args: argparse.Namespace) -> int:
    import numpy as np

    from lesionlab.core.io import atomic_write
    from lesionlab.data.corruptions import gallery
    from lesionlab.data.images import decode_image
    from lesionlab.data.transforms import resize_image

    img = decode_image(args.image)
    pixels = resize_image(img, (args.size, args.size), args.resize) if args.size > 0 else np.asarray(img)
    scale = args.scale or (2 if min(pixels.shape[:2]) < 96 else 1)
    picture = gallery(pixels, args.corruptions.split(","), args.severities.split(","), seed=args.seed,
                      key=args.image.stem, scale=scale)
    atomic_write(args.out, lambda tmp: picture.save(tmp, format="PNG"))
    print(f"{args.out} ({picture.width}x{picture.height} px)")
    return 0
