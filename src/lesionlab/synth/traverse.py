"""``lesionlab synth traverse``: one grid per code, that code varied along the columns and everything else fixed.

Each row keeps one noise vector and one draw of the other codes; the columns step through the code's values (every
class; male / female; the most common sites; ages 20 to 85; a free code from -1 to 1). If a column change is visible
while the rest of the row stays put, the code controls that factor. The grids go into one self-contained HTML page
(and PNG files beside it).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lesionlab.classes import CLASS_CODES
from lesionlab.core.io import atomic_write_text
from lesionlab.data.metadata import SEXES, SITES
from lesionlab.synth.codes import KNOWN_SEXES, Labels
from lesionlab.synth.run import SynthRun

ROW_CLASSES: tuple[str, ...] = ("mel", "nv", "bkl", "bcc", "akiec", "vasc", "df")


def _with(labels: Labels, part: str, value: object, j: int = 0) -> Labels:
    out = Labels(labels.label.clone(), labels.sex.clone(), labels.site.clone(), labels.age.clone(),
                 labels.age_known.clone(), labels.free.clone())
    if part == "class":
        out.label[:] = int(value)  # type: ignore[call-overload]
    elif part == "sex":
        out.sex[:] = SEXES.index(str(value))
    elif part == "site":
        out.site[:] = SITES.index(str(value))
    elif part == "age":
        out.age[:] = float(value)  # type: ignore[arg-type]
    elif part == "free":
        out.free[:, j] = float(value)  # type: ignore[arg-type]
    return out


def code_values(run: SynthRun, steps: int) -> dict[str, list[tuple[str, object]]]:
    """(column title, value) per traversable code of this generator."""
    out: dict[str, list[tuple[str, object]]] = {"class": [(c, i) for i, c in enumerate(CLASS_CODES)]}
    layout = run.layout
    if layout.sex:
        out["sex"] = [(s, s) for s in KNOWN_SEXES]
    if layout.site:
        sites = run.sampler.table["site"].astype(str)
        common = [s for s in sites[sites != "unknown"].value_counts().index[:steps]]
        out["site"] = [(s, s) for s in common]
    if layout.age:
        out["age"] = [(f"{a:.0f}", float(a)) for a in np.linspace(20, 85, steps)]
    for j in range(layout.free):
        out[f"free_{j}"] = [(f"{v:+.2f}", float(v)) for v in np.linspace(-1, 1, steps)]
    return out


def traverse_grid(run: SynthRun, part: str, values: list[tuple[str, object]], rows: int, seed: int, cell: int = 64
                  ) -> Image.Image:
    """The grid of one code: ``rows`` rows (fixed noise and other codes), one column per value."""
    rng = np.random.default_rng([seed, 31])
    counts = run.sampler.class_counts()
    present = [c for c in ROW_CLASSES if counts[CLASS_CODES.index(c)] > 0]
    row_classes = np.array([CLASS_CODES.index(present[r % len(present)]) for r in range(rows)])
    base, _ = run.draw_labels(rows, rng, classes=row_classes)
    z = torch.randn(rows, run.generator.z_dim, generator=torch.Generator().manual_seed(seed))
    key, j = (part, 0) if not part.startswith("free_") else ("free", int(part.split("_")[1]))
    columns = [run.generate(_with(base, key, v, j), seed=seed, z=z) for _, v in values]
    res = run.resolution
    scale = max(1, cell // res)
    size = res * scale
    left, top = 56, 30
    canvas = Image.new("RGB", (left + len(values) * (size + 2), top + rows * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"code: {part}", fill="black")
    for c, (title, _) in enumerate(values):
        draw.text((left + c * (size + 2), 16), title[:10], fill="black")
        for r in range(rows):
            tile = Image.fromarray(columns[c][r]).resize((size, size), Image.Resampling.NEAREST)
            canvas.paste(tile, (left + c * (size + 2), top + r * (size + 2)))
    for r in range(rows):
        draw.text((4, top + r * (size + 2) + size // 2 - 5), CLASS_CODES[int(base.label[r])] if part != "class"
                  else f"row {r + 1}", fill="black")
    return canvas


def traverse(run: SynthRun, out_dir: str | Path, rows: int = 6, steps: int = 7, seed: int = 0) -> Path:
    """Write ``traverse-<code>.png`` for every code and ``traverse.html`` showing them all; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for part, values in code_values(run, steps).items():
        img = traverse_grid(run, part, values, rows, seed)
        img.save(out / f"traverse-{part}.png")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        sections.append(f'<section id="code-{html.escape(part)}" data-testid="traverse-{html.escape(part)}">'
                        f"<h2>{html.escape(part)}</h2><img alt=\"traversal of code {html.escape(part)}\" "
                        f'src="{uri}"></section>')
    trained_on = html.escape(str(run.info.get("data", {}).get("source", "unknown")))
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Code traversals</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}img{image-rendering:pixelated}"
            ".warn{background:#fee;border:1px solid #c00;padding:.5em}</style></head><body>"
            f"<h1>Code traversals: {html.escape(run.path.name)}</h1>"
            "<p class=\"warn\">SYNTHETIC images from a generator, not dermoscopy of real patients.</p>"
            f"<p>Generator trained on {trained_on}. Each row keeps its noise and its other codes; the columns vary "
            "one code. A visible change along a row that leaves the rest alone means that code controls it.</p>"
            + "".join(sections) + "</body></html>")
    return atomic_write_text(out / "traverse.html", page)
