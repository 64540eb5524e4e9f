"""The robustness section of a run report and model card: heatmap, tables, gallery and the headline line.

Reads the ``robustness`` block that :func:`lesionlab.evaluate.robustness.evaluate_corruptions` writes (also in
metrics.json); pure functions from that block to report pieces.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.data.corruptions import CITATION
from lesionlab.evaluate.document import Plot, Table
from lesionlab.evaluate.figures import png_data_uri
from lesionlab.evaluate.robustness import GALLERY_FILE, mean_or_none


def heatmap_figure(block: dict[str, Any]) -> Figure:
    """Balanced accuracy per corruption (rows) and severity (columns) plus the mean, against the clean value."""
    names = list(block["per_corruption"])
    levels = list(block["severities"])
    grid = np.full((len(names), len(levels) + 1), np.nan)
    for c in block["cells"]:
        v = c["balanced_accuracy"]
        grid[names.index(c["corruption"]), levels.index(c["severity"])] = np.nan if v is None else v
    for i, n in enumerate(names):
        v = block["per_corruption"][n]["mean_balanced_accuracy"]
        grid[i, -1] = np.nan if v is None else v
    clean = block.get("clean_balanced_accuracy") or 1.0
    fig = Figure(figsize=(1.0 * (len(levels) + 1) + 3.2, 0.36 * len(names) + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0.0, vmax=max(clean, 1e-6), aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="balanced accuracy")
    ax.set_xticks(range(len(levels) + 1), [*(str(s) for s in levels), "mean"])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    ax.axvline(len(levels) - 0.5, color="black", lw=1)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid[i, j]
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"Balanced accuracy on the corrupted test split (clean {clean:.3f})")
    fig.tight_layout()
    return fig


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{float(v):.{digits}f}"


def headline_text(block: dict[str, Any]) -> str:
    """One line for the model card and the console."""
    norm = block.get("normalised") or {}
    text = (f"mean relative drop {_fmt(block.get('mean_relative_drop'))} of clean balanced accuracy "
            f"{_fmt(block.get('clean_balanced_accuracy'))} under {len(block['per_corruption'])} corruptions x "
            f"{len(block['severities'])} severities (mean corrupted balanced accuracy "
            f"{_fmt(block.get('mean_corrupted_balanced_accuracy'))}); worst: {', '.join(block['worst_corruptions'])}")
    if norm.get("relative_balanced_error") is not None:
        text += (f"; against {norm['reference'].get('name')}: relative balanced error "
                 f"{_fmt(norm['relative_balanced_error'])}, balanced error {_fmt(norm.get('balanced_error'))}")
    elif norm.get("undefined"):
        text += f"; not normalised ({norm['undefined']})"
    safety = block.get("safety")
    if safety:
        mean, clean = safety["mean"], safety["clean"]
        text += (f"; safety layer: cannot assess {_pct(mean['cannot_assess'])} of corrupted images (clean "
                 f"{_pct(clean['cannot_assess'])}), confident errors {_pct(mean['confident_errors'])} (clean "
                 f"{_pct(clean['confident_errors'])}), confident melanoma misses "
                 f"{_pct(mean['confident_mel_misses'])} (clean {_pct(clean['confident_mel_misses'])})")
        if mean.get("unreferred_mel_misses") is not None:
            text += (f", of the melanomas not referred either {_pct(mean['unreferred_mel_misses'])} (clean "
                     f"{_pct(clean.get('unreferred_mel_misses'))})")
        alone = (safety.get("without_check") or {}).get("mean")
        if alone:
            text += (f"; without the degradation check: cannot assess {_pct(alone['cannot_assess'])}, confident "
                     f"melanoma misses {_pct(alone['confident_mel_misses'])}")
        held = (safety.get("held_out") or {}).get("mean")
        if held:
            text += (f"; with each corruption held out of the degradation check: cannot assess "
                     f"{_pct(held['cannot_assess'])}, confident melanoma misses {_pct(held['confident_mel_misses'])}")
    return text


def report_tables(block: dict[str, Any], classes: Sequence[str] = CLASS_CODES) -> list[Any]:
    """The report's robustness tables: per corruption, and per-class recall under the worst corruptions."""
    norm = block.get("normalised") or {}
    norm_per = norm.get("per_corruption") or {}
    rows = []
    for name, p in block["per_corruption"].items():
        cells = {c["severity"]: c["balanced_accuracy"] for c in block["cells"] if c["corruption"] == name}
        rows.append([name, p["family"], *(_fmt(cells.get(s)) for s in block["severities"]),
                     _fmt(p["mean_balanced_error"]), _fmt(p["relative_drop"]),
                     _fmt((norm_per.get(name) or {}).get("relative_balanced_error"))])
    rows.append(["mean", "", *("" for _ in block["severities"]), _fmt(mean_or_none(
        [p["mean_balanced_error"] for p in block["per_corruption"].values()])), _fmt(block["mean_relative_drop"]),
        _fmt(norm.get("relative_balanced_error"))])
    note = (f"Balanced accuracy per severity, balanced error (1 - balanced accuracy) and relative drop "
            f"((clean - corrupted) / clean balanced accuracy) averaged over severities. Clean balanced accuracy "
            f"{_fmt(block['clean_balanced_accuracy'])} on the same images and path. Corruptions after MedMNIST-C "
            f"({CITATION}), scaled to the {block.get('image_size')} input; seed {block.get('seed')}. ")
    if norm.get("relative_balanced_error") is not None:
        note += (f"nRBE: drop relative to the reference {norm['reference'].get('name')} (1 = as robust; 0.5 = half "
                 f"its drop); overall normalised balanced error {_fmt(norm.get('balanced_error'))}.")
    else:
        note += f"Not normalised: {norm.get('undefined')}."
    check = block.get("clean_check") or {}
    if "argmax_agreement" in check:
        note += (f" The {check['path']} inference path agrees with the standard one on "
                 f"{100 * check['argmax_agreement']:.1f}% of the clean images.")
    per = Table("Corrupted test split: balanced accuracy per corruption and severity", "table-corruptions",
                ["corruption", "family", *(f"s{s}" for s in block["severities"]), "mean BE", "relative drop", "nRBE"],
                rows, note)
    recall_rows = [["clean", *(_fmt((block.get("clean_recall") or {}).get(c)) for c in classes)]]
    for name in block["worst_corruptions"]:
        mine = [c for c in block["cells"] if c["corruption"] == name]
        recall_rows.append([f"{name} (mean over severities)",
                            *(_fmt(mean_or_none([c["recall"].get(k) for c in mine])) for k in classes)])
        top = max(mine, key=lambda c: c["severity"])
        recall_rows.append([f"{name} (severity {top['severity']})", *(_fmt(top["recall"].get(k)) for k in classes)])
    worst = Table("Per-class recall under the worst corruptions", "table-corruption-recall", ["condition", *classes],
                  recall_rows, "Recall (sensitivity) of each class: which diagnoses the worst corruptions cost.")
    safety, held = safety_table(block), held_out_table(block)
    return [per, worst] + [t for t in (safety, held) if t is not None]


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}%"


def safety_table(block: dict[str, Any]) -> Table | None:
    """What the run's safety layer does under each corruption (``None`` when the run has no fitted checks)."""
    safety = block.get("safety")
    if not safety:
        return None

    checks = safety.get("checks") or {}
    degradation = checks.get("degradation")

    def row(label: str, s: dict[str, Any], accuracy: Any) -> list[str]:
        return [label, _pct(s["cannot_assess"]), *([_pct(s.get("degraded"))] if degradation else []),
                _pct(s["uncertain"]), _fmt(accuracy), _fmt(s["assessed_accuracy"]),
                _fmt(s["assessed_balanced_accuracy"]), _pct(s["confident_errors"]), _pct(s["confident_mel_misses"]),
                _pct(s.get("unreferred_mel_misses"))]

    rows = [row("clean", safety["clean"], block.get("clean_accuracy"))]
    for name, s in safety["per_corruption"].items():
        rows.append(row(f"{name} (mean)", s, block["per_corruption"][name]["mean_accuracy"]))
        top = s["at_highest_severity"]
        acc = next(c["accuracy"] for c in block["cells"] if c["corruption"] == name
                   and c["severity"] == s["highest_severity"])
        rows.append(row(f"{name} (severity {s['highest_severity']})", top, acc))
    rows.append(row("mean over cells", safety["mean"], block.get("mean_corrupted_accuracy")))
    gate = checks.get("gate") or {}
    note = ("The service's rule on every corrupted image: cannot assess (out of scope, or failed image quality: no "
            "class, no referral flag), uncertain (the model abstains), else assessed. Accuracy of all images against "
            "that of the assessed ones; confident errors: assessed and wrong, as a share of all images; confident "
            "melanoma misses: melanomas assessed as another class, as a share of the melanomas; not referred: those "
            "of them that the referral flag does not send on either, so that nothing on the screen warns of them"
            + (f" (threshold {_fmt(safety.get('referral_threshold'))})" if safety.get("referral_threshold") is not None
               else " (n/a: no referral threshold fitted)") + ". Checks: "
            + (f"{gate.get('method')} gate, threshold {_fmt(gate.get('threshold'))}" if gate else "no gate")
            + f"; abstention margin {_fmt(checks.get('uncertainty_threshold'))}; image-quality limits"
            + (f"; degradation check, threshold {_fmt(degradation.get('threshold'))} (flagged: the share it calls "
               "degraded, part of cannot assess)." if degradation else "; no degradation check."))
    return Table("The safety layer on the corrupted test split", "table-corruption-safety",
                 ["condition", "cannot assess", *(["flagged degraded"] if degradation else []), "uncertain",
                  "accuracy (all)", "accuracy (assessed)",
                  "balanced accuracy (assessed)", "confident errors", "confident melanoma misses",
                  "confident melanoma misses, not referred"], rows, note)


def held_out_table(block: dict[str, Any]) -> Table | None:
    """What the degradation check adds, per corruption: the safety layer without it (the gate, quality limits and
    margin alone), with it as fitted, and with it fitted without that corruption's copies (``None``: neither of the
    comparisons measured)."""
    safety = block.get("safety") or {}
    held, alone = safety.get("held_out"), safety.get("without_check")
    if not held and not alone:
        return None
    variants = [(name, source) for name, source in (("without the check", alone), ("as fitted", safety),
                                                     ("held out", held)) if source]
    figures = ("cannot_assess", "confident_errors", "confident_mel_misses", "unreferred_mel_misses")

    def pair(values: list[Any]) -> str:
        return " / ".join("–" if v is False else _pct(v) for v in values)

    def row(label: str, name: str | None) -> list[str]:
        def get(source: dict[str, Any], key: str) -> Any:
            if name is None:  # the clean images: no corruption to hold out
                return False if source is held else (source.get("clean") or {}).get(key)
            if name == "mean":
                return (source.get("mean") or {}).get(key)
            return ((source.get("per_corruption") or {}).get(name) or {}).get(key)
        flagged = [get(src, "degraded") for _, src in variants if src is not alone]
        return [label, pair(flagged), *(pair([get(src, k) for _, src in variants]) for k in figures)]

    names = list((held or alone)["per_corruption"])
    rows = ([row("clean", None)] if alone and alone.get("clean") else []) + [row(n, n) for n in names]
    rows.append(row("mean over cells", "mean"))
    shown = " / ".join(name for name, _ in variants)
    note = (f"Each cell: {shown}. Without the check: the gate, the image-quality limits and the abstention margin "
            "alone. As fitted: the degradation check trained on copies under all fifteen corruptions. Held out: the "
            "same check fitted without that corruption's copies, the honest figure for a degradation it never saw. "
            "Flagged degraded: as fitted / held out. Means over the severities. Confident errors: assessed and wrong, "
            "of all images; confident melanoma misses: of the melanomas; not referred: those of them that the "
            "referral flag does not send on either.")
    return Table("The degradation check: " + shown, "table-corruption-held-out",
                 ["condition", "flagged degraded", "cannot assess", "confident errors", "confident melanoma misses",
                  "not referred"], rows, note)


def report_plots(block: dict[str, Any], gallery_png: bytes | None = None) -> list[Any]:
    """The heatmap (and the gallery, when its PNG is given; embedded as JPEG to keep the page small)."""
    plots = [Plot("Corrupted test split", "fig-corruptions", png_data_uri(heatmap_figure(block)),
                  "heatmap of balanced accuracy per corruption and severity", headline_text(block))]
    if gallery_png:
        buf = io.BytesIO()
        with Image.open(io.BytesIO(gallery_png)) as img:
            img.convert("RGB").save(buf, format="JPEG", quality=88)
        uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        g = block.get("gallery") or {}
        plots.append(Plot("Corruption gallery", "fig-corruption-gallery", uri,
                          "one test image under every corruption and severity",
                          f"image {g.get('image_id')} ({g.get('class')}); full resolution in {GALLERY_FILE}"))
    return plots


def card_summary(block: dict[str, Any]) -> dict[str, Any]:
    """What ``model_card.json`` keeps: the headline figures and their definitions."""
    norm = block.get("normalised") or {}
    return {"headline": headline_text(block), "mean_relative_drop": block.get("mean_relative_drop"),
            "clean_balanced_accuracy": block.get("clean_balanced_accuracy"),
            "mean_corrupted_balanced_accuracy": block.get("mean_corrupted_balanced_accuracy"),
            "worst_corruptions": block.get("worst_corruptions"),
            "normalised_relative_balanced_error": norm.get("relative_balanced_error"),
            "normalised_balanced_error": norm.get("balanced_error"), "reference": norm.get("reference"),
            "corruptions": block.get("corruptions"), "severities": block.get("severities"),
            "citation": block.get("citation"),
            "safety": None if not block.get("safety") else {
                "clean": block["safety"]["clean"], "mean_over_cells": block["safety"]["mean"],
                "held_out_mean_over_cells": (block["safety"].get("held_out") or {}).get("mean"),
                "without_check": {k: (block["safety"].get("without_check") or {}).get(k)
                                  for k in ("clean", "mean")}}}
