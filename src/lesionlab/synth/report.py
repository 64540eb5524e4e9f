"""The ``synth evaluate`` report: the project's self-contained HTML (figures inline) + Markdown, from the figures in
``synth-eval.json`` (pure apart from :func:`write_synth_report`)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from lesionlab.classes import CLASS_CODES
from lesionlab.evaluate.report import Document, Plot, Table, fmt, png_data_uri, write_report

SYNTHETIC_WARNING = ("Every image evaluated here as 'synthetic' was GENERATED: none is a dermoscopy image of a real "
                     "patient. Runs trained on them record it (their data source says SYNTHETIC).")


def _pil_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def samples_image(images: np.ndarray, classes: np.ndarray, columns: int = 8, cell: int = 64) -> Image.Image:
    """Class rows of generated samples (upscaled, nearest)."""
    rows = [c for c in dict.fromkeys(classes.tolist())]
    size = cell
    canvas = Image.new("RGB", (48 + columns * (size + 2), len(rows) * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, c in enumerate(rows):
        idx = np.flatnonzero(classes == c)[:columns]
        draw.text((4, r * (size + 2) + size // 2 - 5), CLASS_CODES[int(c)], fill="black")
        for j, i in enumerate(idx):
            tile = Image.fromarray(images[i]).resize((size, size), Image.Resampling.NEAREST)
            canvas.paste(tile, (48 + j * (size + 2), r * (size + 2)))
    return canvas


def pairs_image(synthetic: np.ndarray, real: np.ndarray, distances: Sequence[float], cell: int = 64) -> Image.Image:
    """Closest pairs: generated image above its nearest real training image, distance underneath."""
    n = len(synthetic)
    canvas = Image.new("RGB", (n * (cell + 6) + 90, 2 * (cell + 4) + 16), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, cell // 2), "generated", fill="black")
    draw.text((2, cell + 4 + cell // 2), "nearest real", fill="black")
    for i in range(n):
        x = 90 + i * (cell + 6)
        canvas.paste(Image.fromarray(synthetic[i]).resize((cell, cell), Image.Resampling.NEAREST), (x, 0))
        canvas.paste(Image.fromarray(real[i]).resize((cell, cell), Image.Resampling.NEAREST), (x, cell + 4))
        draw.text((x, 2 * (cell + 4)), f"{distances[i]:.1f}", fill="black")
    return canvas


def stages_figure(stages: list[dict[str, Any]], refs: dict[str, float]) -> Figure:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.plot([s["resolution"] for s in stages], [s["fd"] for s in stages], "o-", label="generator (EMA) at stage end")
    colours = {"pixelated real": "tab:red", "real held-out": "tab:green"}
    for name, value in refs.items():
        ax.axhline(value, ls="--", color=colours.get(name, "grey"), label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks([s["resolution"] for s in stages], [str(s["resolution"]) for s in stages])
    ax.set_xlabel("stage resolution (px)")
    ax.set_ylabel("FD-lite0 to real training images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def nn_figure(d_syn: np.ndarray, d_held: np.ndarray) -> Figure:
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    bins = np.linspace(0, max(d_syn.max(), d_held.max()), 50)
    ax.hist(d_held, bins=bins, alpha=0.6, density=True, label="real held-out images")
    ax.hist(d_syn, bins=bins, alpha=0.6, density=True, label="generated images")
    ax.axvline(d_held.min(), color="k", ls="--", label="closest held-out image")
    ax.set_xlabel("distance to the nearest real training image (Lite0 features)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _score(d: dict[str, Any] | None, key: str = "balanced_accuracy") -> str:
    if not d or d.get(key) is None:
        return "n/a"
    return fmt(d[key])


def _ci(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("low") is None:
        return ""
    return f" [{ci['low']:.3f}, {ci['high']:.3f}]"


def _card(doc: dict[str, Any]) -> list[tuple[str, str]]:
    gen = doc.get("generator", {})
    trained = gen.get("trained_on", {})
    nets = gen.get("networks") or {}
    data = doc.get("data", {})
    return [
        ("Generator run", str(doc.get("run"))),
        ("Trained on", f"{trained.get('source', 'n/a')}{' (SYNTHETIC)' if trained.get('synthetic') else ''}; "
                       f"{trained.get('n_train', 'n/a')} training images, split {trained.get('split', 'n/a')}"),
        ("Networks", f"generator {fmt(nets.get('generator_parameters'))} / critic "
                     f"{fmt(nets.get('critic_parameters'))} parameters; channels {nets.get('channels')}; "
                     f"{gen.get('resolution')} px"),
        ("Training", f"{fmt(gen.get('images'))} real images shown, {fmt(gen.get('seconds'), 0)} s"),
        ("Evaluated on", f"{data.get('source')}: {data.get('n_train')} training, "
                         f"{data.get('n_held_out')} held-out (val + test) images"),
        ("Samples", f"{doc.get('settings', {}).get('n_per_class')} generated images per class, clinical codes drawn "
                    "from real training images of that class"),
        ("Evaluated", f"{doc.get('created')} in {fmt(doc.get('seconds'), 0)} s"),
    ]


def fidelity_parts(fid: dict[str, Any]) -> tuple[list[Table], list[Plot]]:
    """The fidelity table, the per-stage table and its figure."""
    rows = []
    names = {"synthetic": "generated (class-balanced)", "real_held_out": "real held-out (real vs real)",
             "pixelated_real": f"real held-out pixelated {fid.get('pixelate_factor', '?')}x (degraded)"}
    for key, title in names.items():
        m = fid.get(key)
        if m:
            rows.append([title, fmt(m["fd"], 1), fmt(m["kid"], 4), fmt(m["precision"]), fmt(m["recall"]),
                         fmt(m["n"])])
    tables = [Table("Fidelity and diversity (vs real training images)", "table-fidelity",
                    ["set", "FD-lite0", "KID-lite0", "precision", "recall", "n"], rows,
                    "Lower FD/KID is closer to the real images; precision = share of the set inside the real "
                    "manifold (fidelity), recall = share of real images inside the set's manifold (diversity). "
                    "Real sets are class-weighted to match a class-balanced sample. FD-lite0/KID-lite0 are not "
                    "comparable with published FID/KID (InceptionV3).")]
    plots = []
    stages = fid.get("stages") or []
    if stages:
        tables.append(Table("FD-lite0 across stages", "table-stages", ["stage", "FD-lite0", "KID-lite0", "seconds"],
                            [[f"{s['resolution']} px", fmt(s["fd"], 1), fmt(s["kid"], 4), fmt(s.get("seconds"), 0)]
                             for s in stages],
                            "EMA generator saved at the end of each stage, its images enlarged (nearest) to the final "
                            "resolution; same codes and noise at every stage."))
        refs = {}
        if fid.get("pixelated_real"):
            refs["pixelated real"] = fid["pixelated_real"]["fd"]
        if fid.get("real_held_out"):
            refs["real held-out"] = fid["real_held_out"]["fd"]
        plots.append(Plot("FD-lite0 across stages", "fig-stages", png_data_uri(stages_figure(stages, refs)),
                          "FD-lite0 of each stage's generator with the real and degraded references"))
    return tables, plots


def label_table(lf: dict[str, Any]) -> Table | None:
    rows = []
    if lf.get("synthetic"):
        syn, real = lf["synthetic"], lf.get("real_test") or {}
        rows.append(["independent classifier", _score(syn) + _ci(syn.get("ci")), _score(real) + _ci(real.get("ci"))]
                    + [f"{fmt(syn['recall'].get(c))} / {fmt(real.get('recall', {}).get(c))}" for c in CLASS_CODES])
    probe = lf.get("linear_probe") or {}
    if probe.get("synthetic"):
        rows.append(["linear probe (Lite0 features, real-trained)", _score(probe["synthetic"]),
                     _score(probe.get("real_held_out"))] + ["" for _ in CLASS_CODES])
    if not rows:
        return None
    return Table("Label fidelity: is a generated 'mel' a melanoma to an independent classifier?",
                 "table-label-fidelity", ["classifier", "balanced acc. on generated", "on real test",
                                          *[f"recall {c} (gen / real)" for c in CLASS_CODES]], rows,
                 f"Classifier: {lf.get('classifier', 'none given')}. Real test images are at the "
                 "generator's resolution, like the generated ones. Chance is 1/7 = 0.143. 95% bootstrap "
                 "intervals in brackets.")


def _code_cell(codes: dict[str, Any], block: str, part: str) -> str:
    m = (codes.get(block) or {}).get(part)
    if not m:
        return "n/a"
    if part == "age":
        return "n/a" if m.get("r") is None else f"{m['r']:.3f} (p {m['p']:.2g}, n {m['n']})"
    return f"{fmt(m.get('balanced_accuracy'))} (chance {fmt(m.get('chance'))}, n {m.get('n')})"


def codes_table(codes: dict[str, Any]) -> Table:
    blocks = ("real_probe_on_real_held_out", "real_probe_on_synthetic", "synthetic_probe_on_synthetic",
              "q_head_on_synthetic", "q_head_on_real_held_out")
    rows = [[label, *[_code_cell(codes, b, part) for b in blocks]]
            for part, label in (("class", "class (balanced acc.)"), ("sex", "sex (balanced acc.)"),
                                ("site", "site (balanced acc.)"), ("age", "age (Pearson r)"))]
    for j, m in enumerate(codes.get("free_codes_synthetic_probe") or []):
        q = (codes.get("q_head_on_synthetic") or {}).get("free") or []
        qr = q[j]["r"] if j < len(q) and q[j].get("r") is not None else None
        rows.append([f"free code {j} (Pearson r)", "-", "-", "n/a" if m.get("r") is None else f"{m['r']:.3f}",
                     "n/a" if qr is None else f"{qr:.3f}", "-"])
    return Table("Code recovery", "table-codes",
                 ["code", "real probe on real held-out", "real probe on generated", "generated probe on "
                  "generated", "critic's Q head on generated", "Q head on real held-out"], rows,
                 "Real probe: linear models on Lite0 features trained on real training images (does a code "
                 "mean the real thing?). Generated probe: trained on half of the generated images with their "
                 "codes, tested on the other half (does the code change the image at all?). The Q head was "
                 "trained with the generator and can read codes that no independent model sees: it is "
                 "shown for contrast, not as evidence.")


def memorisation_table(mem: dict[str, Any]) -> Table:
    return Table("Memorisation", "table-memorisation", ["measure", "value"], [
        ["generated images closer to a training image than any real held-out image is",
         f"{fmt(mem['fraction_closer_than_any_held_out'])} ({mem['count_closer']} of {mem['n']})"],
        ["threshold: smallest held-out distance to the training set", fmt(mem["threshold_min_held_out_distance"], 2)],
        ["share below the held-out 1% / 5% quantile (about 0.01 / 0.05 if nothing is copied)",
         f"{fmt(mem['fraction_below_held_out_p01'])} / {fmt(mem['fraction_below_held_out_p05'])}"],
        ["median nearest-neighbour distance, generated / real held-out",
         f"{fmt(mem['median_nn_distance']['synthetic'], 2)} / {fmt(mem['median_nn_distance']['real_held_out'], 2)}"],
        *[[f"share closer than any held-out image: {c}", fmt(v)] for c, v in mem["per_class_fraction"].items()],
    ], "Distances between Lite0 features; the closest pairs are shown in the figures.")


def usefulness_tables(useful: dict[str, Any]) -> list[Table]:
    preset = f"`{useful.get('preset', 'of the settings')}`"
    if useful.get("overrides"):
        preset += f" ({' '.join(useful['overrides'])})"
    arm_rows = []
    for m in useful["arms"].values():
        ci = m.get("ci", {}).get("balanced_accuracy")
        arm_rows.append([m["title"], fmt(m.get("n_train")), _score(m) + _ci(ci), fmt(m.get("accuracy")),
                         *[fmt(m["recall"].get(c)) for c in CLASS_CODES]])
    tables = [Table("Usefulness on the real test split", "table-usefulness",
                    ["training data", "train images", "balanced acc. [95% CI]", "accuracy",
                     *[f"recall {c}" for c in CLASS_CODES]], arm_rows,
                    f"{useful.get('n_test')} real test images at the generator's resolution; every arm trains "
                    f"with the classifier preset {preset} and selects its epoch on the real validation split.")]
    test_rows = [[f"{t['arm']} - {t['reference']}", f"{t['difference']:+.3f}",
                  f"[{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}]" if t.get("ci") else "n/a",
                  f"{t['p_bootstrap']:.3g}", f"{t['p_mcnemar']:.3g}"] for t in useful.get("tests", [])]
    if test_rows:
        tables.append(Table("Paired tests (same test images)", "table-usefulness-tests",
                            ["comparison", "balanced acc. difference", "95% CI", "p (paired bootstrap)",
                             "p (McNemar, accuracy)"], test_rows))
    return tables


def image_plots(mem: dict[str, Any], samples: tuple[np.ndarray, np.ndarray] | None,
                pairs: tuple[np.ndarray, np.ndarray] | None, stage_grids: Sequence[Path],
                nn: tuple[np.ndarray, np.ndarray] | None) -> list[Plot]:
    plots = []
    if samples is not None:
        plots.append(Plot("Generated samples (one row per class)", "fig-samples",
                          _pil_uri(samples_image(*samples)), "generated samples per class"))
    if pairs is not None and mem:
        plots.append(Plot("Closest pairs", "fig-closest-pairs",
                          _pil_uri(pairs_image(pairs[0], pairs[1], [c["distance"] for c in mem["closest"]])),
                          "generated images and their nearest real training images"))
    if nn is not None:
        plots.append(Plot("Nearest-neighbour distances", "fig-nn", png_data_uri(nn_figure(*nn)),
                          "distance to the nearest real training image: generated vs real held-out"))
    for path in stage_grids:
        plots.append(Plot(f"Sample grid {path.stem}", f"fig-{path.stem}", _pil_uri(Image.open(path).convert("RGB")),
                          f"fixed codes and noise at the end of {path.stem}"))
    return plots


def synth_document(doc: dict[str, Any], samples: tuple[np.ndarray, np.ndarray] | None = None,
                   pairs: tuple[np.ndarray, np.ndarray] | None = None, stage_grids: Sequence[Path] = (),
                   nn: tuple[np.ndarray, np.ndarray] | None = None) -> Document:
    """The report's content (pure but for reading the stage grid PNGs)."""
    gen = doc.get("generator", {})
    warnings = [SYNTHETIC_WARNING]
    if gen.get("trained_on", {}).get("synthetic"):
        warnings.append("The generator itself was trained on SYNTHETIC data (lesionlab's built-in demo set): these "
                        "numbers test the software, not how well it models dermoscopy.")
    tables, plots = fidelity_parts(doc.get("fidelity", {}))
    label = label_table(doc.get("label_fidelity", {}))
    tables += [label] if label is not None else []
    tables.append(codes_table(doc.get("codes", {})))
    mem = doc.get("memorisation", {})
    tables += [memorisation_table(mem)] if mem else []
    tables += usefulness_tables(doc["usefulness"]) if doc.get("usefulness") else []
    plots += image_plots(mem, samples, pairs, stage_grids, nn)
    return Document(title=f"Synthetic images: {Path(str(doc.get('run'))).name}",
                    subtitle=f"generator at {gen.get('resolution')} px - what its images are worth", kind="synth",
                    warnings=warnings, card=_card(doc), plots=plots, tables=tables,
                    notes=list(doc.get("notes") or []))


def write_synth_report(doc: dict[str, Any], out_dir: Path, **parts: Any) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir``."""
    return write_report(synth_document(doc, **parts), out_dir)
