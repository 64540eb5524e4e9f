"""Reports: one self-contained HTML file (figures inlined as base64 PNG) plus Markdown with the same tables.

A run report is rendered from an evaluation directory (``metrics.json`` + ``predictions.csv``, as written by
``lesionlab evaluate``); a grid report from a table of runs and the tests between conditions. Both are pure
functions from data to text (:func:`run_report`, :func:`grid_report`); the ``render_*`` functions only add file IO.
Every section carries a stable ``id`` and ``data-testid`` so browser tests (and people) can find it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from matplotlib.figure import Figure

from lesionlab.classes import CLASS_CODES, CLASSES
from lesionlab.evaluate.metrics import HEADLINE, reliability_bins
from lesionlab.evaluate.predictions import arrays, read_predictions
from lesionlab.evaluate.stats import TestResult, format_p

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
GRID_RESULTS_FILE = "results.csv"

INTENDED_USE = ("Assistive decision support for clinicians who already examine dermoscopy images: a second opinion "
                "and a triage aid that suggests which lesions to refer. It is not a diagnostic device, has not been "
                "validated prospectively or cleared by any regulator, and must not be used to rule out malignancy "
                "or to make decisions without a trained clinician.")
KNOWN_LIMITS = (
    "Skin types: HAM10000 comes from Austrian and Australian practices; darker skin (Fitzpatrick IV-VI) is "
    "under-represented, so performance there is unknown and likely lower.",
    "Dermoscopy only: trained and evaluated on dermoscopic images; clinical (macroscopic) photographs are out "
    "of scope.",
    "Seven classes only (akiec, bcc, bkl, df, mel, nv, vasc): any other lesion (e.g. squamous cell carcinoma "
    "outside akiec, amelanotic or nail lesions) is forced into one of them.",
    "Single-source biases: two centres, one image acquisition culture, and histopathology confirmation for only "
    "part of the lesions; labels of benign lesions rely partly on follow-up or expert consensus.",
    "Class imbalance: nevi dominate; rare classes (df, vasc) have few test images, so their per-class figures "
    "have wide uncertainty.",
)

METRIC_NAMES = {
    "accuracy": "Accuracy", "error_rate": "Error rate", "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1", "macro_auc": "Macro AUC (one-vs-rest)", "macro_ap": "Macro average precision",
    "macro_gmean": "Macro G-mean", "ece": "Expected calibration error", "nll": "Negative log-likelihood",
    "brier": "Brier score",
}


class ReportError(ValueError):
    """Inputs a report cannot be made from; the message names the file or field."""


# ------------------------------------------------------------------------------------------------- pieces


@dataclass
class Table:
    """A titled table rendered identically into HTML and Markdown (cells are already formatted strings)."""

    title: str
    testid: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        """GitHub Markdown: heading, table, note."""
        esc = [str(c).replace("|", "\\|") for c in self.columns]
        lines = [f"### {self.title}", "", "| " + " | ".join(esc) + " |", "|" + "---|" * len(esc)]
        lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


@dataclass
class Plot:
    """A figure as an inline PNG data URI."""

    title: str
    testid: str
    data_uri: str
    alt: str
    caption: str = ""


@dataclass
class Document:
    """Everything a report template needs."""

    title: str
    subtitle: str
    kind: str  # "run" or "grid"
    warnings: list[str] = field(default_factory=list)
    card: list[tuple[str, str]] = field(default_factory=list)  # model card: (field, text)
    card_lists: dict[str, list[str]] = field(default_factory=dict)  # model card: (heading -> bullet points)
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: ``n/a`` for undefined, fixed decimals for floats, text otherwise."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return str(value)


def fmt_ci(ci: dict[str, Any] | None) -> str:
    """``low - high`` of a bootstrap CI, or why it is missing."""
    if not ci:
        return "not computed"
    if ci.get("low") is None:
        return f"n/a ({ci.get('undefined', 'undefined')})"
    return f"{ci['low']:.3f} – {ci['high']:.3f}"


def png_data_uri(fig: Figure) -> str:
    """Encode a matplotlib figure as ``data:image/png;base64,...`` (no pyplot, no display needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def data_licence(source: str, synthetic: bool) -> str:
    """The licence of the evaluation data, from the source's name."""
    name = source.lower()
    if synthetic or "synth" in name:
        return "synthetic images generated by lesionlab (no third-party licence; not clinical data)"
    if "isic" in name:
        return ("ISIC Archive images: licence per the challenge's terms (ISIC 2018 task 3 / HAM10000: CC BY-NC 4.0, "
                "non-commercial use with attribution)")
    if any(k in name for k in ("ham10000", "dermamnist", "npz")):
        return ("CC BY-NC 4.0 (HAM10000, Tschandl, Rosendahl & Kittler, Sci. Data 5:180161, 2018): non-commercial "
                "use only, with attribution")
    return f"unknown for data source {source!r}: check its licence before any use"


# ------------------------------------------------------------------------------------------------ figures


def confusion_figure(counts: np.ndarray, classes: Sequence[str]) -> Figure:
    """Counts and row-normalised (per true class) heatmaps side by side; absent rows marked n/a."""
    counts = np.asarray(counts)
    support = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, support, out=np.full(counts.shape, np.nan), where=support > 0)
    fig = Figure(figsize=(11, 4.6))
    for ax, data, title, is_norm in ((fig.add_subplot(1, 2, 1), counts, "Counts", False),
                                     (fig.add_subplot(1, 2, 2), norm, "Row-normalised (recall)", True)):
        shown = np.ma.masked_invalid(data.astype(float))
        im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if is_norm else max(1, data.max()))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(len(classes)), classes, rotation=45)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        top = np.nanmax(data) if np.isfinite(data).any() else 1
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                text = "n/a" if not np.isfinite(v) else (f"{v:.2f}" if is_norm else str(int(v)))
                dark = np.isfinite(v) and v > 0.6 * (1 if is_norm else top)
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.tight_layout()
    return fig


def curves_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], kind: str) -> Figure:
    """Per-class one-vs-rest ROC (``kind="roc"``) or precision-recall (``"pr"``) curves; absent classes skipped."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig = Figure(figsize=(5.4, 4.7))
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{i}" for i in range(len(classes))]
    for k, code in enumerate(classes):
        truth = y == k
        if not truth.any() or (kind == "roc" and truth.all()):
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_curve(truth, proba[:, k])
            ax.plot(fpr, tpr, color=colors[k], lw=1.6, label=f"{code} (AUC {auc(fpr, tpr):.3f}, n={truth.sum()})")
        else:
            prec, rec, _ = precision_recall_curve(truth, proba[:, k])
            ax.step(rec, prec, where="post", color=colors[k], lw=1.6, label=f"{code} (n={truth.sum()})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title("One-vs-rest ROC curves")
    else:
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        ax.set_title("One-vs-rest precision-recall curves")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    if kind == "roc":
        ax.legend(fontsize=8, loc="lower right")
    else:  # precision-recall curves fill any corner; keep the legend off the axes
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    fig.tight_layout()
    return fig


def reliability_figure(y: np.ndarray, proba: np.ndarray, n_bins: int) -> Figure:
    """Reliability diagram (accuracy per confidence bin against the diagonal) over a histogram of confidences."""
    bins = reliability_bins(y, proba, n_bins)
    centers = (bins["lower"] + bins["upper"]) / 2
    width = 1.0 / n_bins
    fig = Figure(figsize=(5.4, 5.6))
    ax, hist = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    used = bins["count"] > 0
    ax.bar(centers[used], bins["accuracy"][used], width=width * 0.95, color="C0", edgecolor="C0", label="accuracy")
    ax.bar(centers[used], bins["confidence"][used] - bins["accuracy"][used], bottom=bins["accuracy"][used],
           width=width * 0.95, fill=False, edgecolor="C3", hatch="//", lw=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (top-label confidence, {n_bins} bins)", pad=24)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False)
    hist.bar(centers, bins["count"], width=width * 0.95, color="grey")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (max probability)")
    hist.set_ylabel("images")
    fig.tight_layout()
    return fig


def sens_spec_figure(per_class: dict[str, dict[str, Any]], classes: Sequence[str]) -> Figure:
    """Grouped bars of sensitivity (TPR) and specificity (TNR) per class; undefined values labelled n/a."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(classes))
    for offset, key, label, color in ((-0.2, "tpr", "sensitivity (TPR)", "C0"), (0.2, "tnr", "specificity (TNR)",
                                                                               "C2")):
        values = [per_class[c][key] for c in classes]
        ax.bar(x + offset, [0 if v is None else v for v in values], width=0.38, label=label, color=color)
        for xi, v in zip(x, values, strict=True):
            ax.text(xi + offset, (v or 0) + 0.01, "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("rate")
    ax.set_title("Per-class sensitivity and specificity (one-vs-rest)")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    return fig


def grid_figure(rows: pd.DataFrame, metric: str, group_cols: Sequence[str]) -> Figure:
    """Each run as a dot per condition, with the condition mean as a bar: the spread behind mean +- sd."""
    keys = rows[list(group_cols)].astype(str).agg(" / ".join, axis=1) if group_cols else pd.Series(["all"] * len(rows))
    order = list(dict.fromkeys(keys))
    fig = Figure(figsize=(max(6, 0.9 * len(order) + 2), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    for i, key in enumerate(order):
        vals = pd.to_numeric(rows.loc[keys == key, metric], errors="coerce").dropna().to_numpy()
        if vals.size:
            ax.bar(i, vals.mean(), width=0.6, color="C0", alpha=0.35)
            ax.scatter(i + rng.uniform(-0.15, 0.15, vals.size), vals, color="C0", s=18, zorder=3)
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per condition (dots: runs, bars: mean)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ run document


def _headline_table(doc: dict[str, Any]) -> Table:
    ci = doc.get("ci") or {}
    rows = []
    for name in ("accuracy", "error_rate", "balanced_accuracy", "macro_f1", "macro_auc", "macro_ap", "macro_gmean",
                 "ece", "nll", "brier"):
        if name not in doc:
            continue
        rows.append([METRIC_NAMES.get(name, name), fmt(doc[name]), fmt_ci(ci.get(name)) if name in HEADLINE else ""])
    level = next((c.get("level") for c in ci.values() if c), 0.95)
    n_boot = next((c.get("n_boot") for c in ci.values() if c), 0)
    note = (f"{100 * level:.0f}% CIs: percentile bootstrap, {n_boot} replicates stratified by true class. "
            if ci else "No bootstrap CIs were computed. ")
    note += (f"ECE over {doc.get('ece_bins', 15)} equal-width top-label confidence bins. Macro averages cover the "
             "classes present in the data.")
    return Table("Metrics", "table-metrics", ["metric", "value", "95% CI" if ci else "CI"], rows, note)


def _per_class_table(doc: dict[str, Any], classes: Sequence[str]) -> Table:
    rows = []
    for c in classes:
        pc = doc["per_class"][c]
        rows.append([c, fmt(pc["support"]), fmt(pc["predicted"]), fmt(pc["tpr"]), fmt(pc["tnr"]), fmt(pc["gmean"]),
                     fmt(pc["precision"]), fmt(pc["f1"]), fmt(pc["auc"]), fmt(pc["ap"])])
    undefined = doc.get("undefined") or {}
    note = "n/a = undefined: " + "; ".join(f"{k} ({v})" for k, v in undefined.items()) if undefined else ""
    return Table("Per-class metrics", "table-per-class",
                 ["class", "n", "predicted", "TPR (sens.)", "TNR (spec.)", "G-mean", "precision", "F1", "AUC", "AP"],
                 rows, note)


def _confusion_table(doc: dict[str, Any], classes: Sequence[str]) -> Table:
    counts = doc["confusion_matrix"]["counts"]
    rows = [[c, *(str(v) for v in row)] for c, row in zip(classes, counts, strict=True)]
    return Table("Confusion matrix (counts; rows true, columns predicted)", "table-confusion", ["true \\ pred",
                                                                                                  *classes], rows)


def _referral_table(doc: dict[str, Any]) -> Table | None:
    ref = doc.get("referral")
    mal = doc.get("malignant")
    if not ref and not mal:
        return None
    rows = []
    if mal:
        rows += [["malignant vs benign AUC (summed malignant probability)", fmt(mal.get("auc"))],
                 ["arg-max malignant: sensitivity", fmt(mal.get("sensitivity"))],
                 ["arg-max malignant: specificity", fmt(mal.get("specificity"))],
                 ["malignant / benign images", f"{mal.get('n_malignant')} / {mal.get('n_benign')}"]]
    if ref:
        rows += [["referral threshold (malignant score ≥)", fmt(ref.get("threshold"))],
                 ["threshold source", str(ref.get("source", ""))],
                 ["target sensitivity (validation)", fmt(ref.get("target_sensitivity"))],
                 ["sensitivity at threshold (this split)", fmt(ref.get("sensitivity"))],
                 ["specificity at threshold (this split)", fmt(ref.get("specificity"))],
                 ["referral rate (this split)", fmt(ref.get("referral_rate"))]]
    return Table("Malignancy triage", "table-referral", ["quantity", "value"], rows,
                 "Malignant classes: akiec, bcc, mel. The referral threshold is fitted on the validation split only.")


def _runtime_table(doc: dict[str, Any]) -> Table | None:
    t = doc.get("timing")
    if not t:
        return None
    rows = [["device", str(t.get("device"))], ["test-time augmentation", fmt(t.get("tta"))],
            ["ms / image, batch 1 (median)", f"{t['ms_per_image_batch1']:.2f} (n={t.get('n_batch1')})"],
            [f"ms / image, batch {t.get('batch_size')}", f"{t['ms_per_image_batched']:.2f} (n={t.get('n_batched')})"],
            ["torch", str(t.get("torch"))]]
    return Table("Runtime", "table-runtime", ["quantity", "value"], rows,
                 "Model forward passes plus the run's preprocessing (resize check, normalisation) of already decoded "
                 "images; JPEG decoding is not included. Other jobs may have shared the machine.")


def _audit_text(audit: Any) -> str:
    if not audit:
        return "no audit available for this split (run `lesionlab data audit`, or evaluate with --audit)"
    if isinstance(audit, dict):
        status, verdict = audit.get("status"), audit.get("verdict")
        text = ": ".join(str(v) for v in (status, verdict) if v) or "see audit.json"
        if audit.get("images_hashed") == 0:
            text += " (lesion overlap checked from metadata; images not hashed for duplicates)"
        return text
    return str(audit)


def model_card(doc: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Model card fields from the evaluation document: model, data, split and audit, licence, use and limits."""
    run = doc.get("run") or {}
    data = doc.get("data") or {}
    ev = doc.get("evaluation") or {}
    source = str(data.get("source", "unknown"))
    synthetic = bool(data.get("synthetic", False))
    counts = doc.get("class_counts") or {}
    card = [
        ("Model", f"{run.get('model', 'unknown')} ({fmt(run.get('parameters'))} parameters; head "
                  f"{run.get('head', 'n/a')}, clinical-data fusion {run.get('fusion', 'none')})"),
        ("Run", f"{run.get('name', '')} ({run.get('path', '')}), trained {run.get('created', 'n/a')}"),
        ("Training data", str(run.get("training_data", "n/a"))),
        ("Evaluation data", f"{source}{' (SYNTHETIC images)' if synthetic else ''}; {doc.get('n')} images: "
                            + ", ".join(f"{k} {v}" for k, v in counts.items())),
        ("Split", f"{data.get('split', 'n/a')} of split '{data.get('split_name', 'n/a')}' "
                  f"(hash {data.get('split_hash') or 'n/a'})"),
        ("Split audit", _audit_text(doc.get("audit"))),
        ("Data licence", data.get("licence") or data_licence(source, synthetic)),
        ("Evaluation", f"test-time augmentation {fmt(ev.get('tta'))}; temperature "
                       f"{fmt(ev.get('temperature'))} ({ev.get('temperature_source', 'n/a')}); "
                       f"lesionlab {ev.get('lesionlab_version', 'n/a')}, {ev.get('created', '')}"),
        ("Intended use", INTENDED_USE),
    ]
    if doc.get("subgroups"):
        from lesionlab.evaluate.subgroups import summary_text

        card.insert(-1, ("Subgroups", summary_text(doc["subgroups"])))
    if doc.get("robustness"):
        from lesionlab.evaluate.robustness import headline_text

        card.insert(-1, ("Robustness (corrupted test split)", headline_text(doc["robustness"])))
    return card, {"Known limits": list(KNOWN_LIMITS)}


def run_report(doc: dict[str, Any], predictions: pd.DataFrame, gallery_png: bytes | None = None) -> Document:
    """The run report's content from a metrics document and its predictions table (pure).

    ``gallery_png``: the corruption gallery image, shown with the robustness figures when given.
    """
    classes = list(doc.get("classes") or CLASS_CODES)
    y, proba = arrays(predictions, classes)
    if len(y) != doc.get("n"):
        raise ReportError(f"metrics describe {doc.get('n')} images but the predictions table has {len(y)}")
    names = {c.code: c.name for c in CLASSES}
    run = doc.get("run") or {}
    data = doc.get("data") or {}
    warnings = []
    if data.get("synthetic"):
        warnings.append("Evaluated on SYNTHETIC images: these numbers test the software, not clinical performance.")
    warnings += [str(w) for w in (doc.get("evaluation") or {}).get("warnings") or []]
    if doc.get("absent_classes"):
        warnings.append(f"Classes absent from this split: {', '.join(doc['absent_classes'])}; their sensitivity, "
                        "AUC and AP are undefined (n/a) and the macro averages leave them out.")
    card, lists = model_card(doc)
    plots = [
        Plot("Confusion matrix", "fig-confusion", png_data_uri(confusion_figure(
            np.asarray(doc["confusion_matrix"]["counts"]), classes)), "confusion matrix heatmaps (counts, normalised)"),
        Plot("ROC curves", "fig-roc", png_data_uri(curves_figure(y, proba, classes, "roc")),
             "per-class one-vs-rest ROC curves"),
        Plot("Precision-recall curves", "fig-pr", png_data_uri(curves_figure(y, proba, classes, "pr")),
             "per-class precision-recall curves"),
        Plot("Reliability diagram", "fig-reliability", png_data_uri(reliability_figure(y, proba,
                                                                                       doc.get("ece_bins", 15))),
             "reliability diagram", f"ECE {fmt(doc.get('ece'))}"),
        Plot("Sensitivity and specificity", "fig-sens-spec", png_data_uri(sens_spec_figure(doc["per_class"],
                                                                                             classes)),
             "per-class sensitivity and specificity bars"),
    ]
    tables = [_headline_table(doc), _per_class_table(doc, classes), _confusion_table(doc, classes)]
    tables += [t for t in (_referral_table(doc), _runtime_table(doc)) if t is not None]
    if doc.get("subgroups"):
        from lesionlab.evaluate import subgroups

        tables += subgroups.report_tables(doc["subgroups"])
    if doc.get("robustness"):
        from lesionlab.evaluate import robustness

        tables += robustness.report_tables(doc["robustness"], classes)
        plots += robustness.report_plots(doc["robustness"], gallery_png)
    tables.append(Table("Classes", "table-classes", ["code", "name"], [[c, names.get(c, c)] for c in classes]))
    return Document(title=f"Evaluation report: {run.get('name', 'run')}",
                    subtitle=f"{data.get('source', 'data')} / {data.get('split', 'split')} - {doc.get('n')} images",
                    kind="run", warnings=warnings, card=card, card_lists=lists, plots=plots, tables=tables,
                    notes=list(doc.get("notes") or []))


# ----------------------------------------------------------------------------------------- grid document


#: Top-level scalar keys of metrics.json: never condition labels, even when a CSV round trip makes them integers.
METRIC_KEYS = frozenset({"n", "accuracy", "error_rate", "balanced_accuracy", "macro_f1", "macro_auc", "macro_ap",
                         "macro_gmean", "ece", "ece_bins", "nll", "brier"})


def _group_columns(rows: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Condition labels: columns that are neither ids, repeats, metrics nor dotted metric leaves."""
    skip = {"run_id", "run", "seed", "fold", "path", *metrics, *METRIC_KEYS}
    return [c for c in rows.columns if c not in skip and "." not in c and not pd.api.types.is_float_dtype(rows[c])]


def tests_table(tests: Sequence[TestResult]) -> Table:
    """One row per test: what was compared, the test, statistic, p (and Holm p), sizes and effect size."""
    rows = []
    for t in tests:
        holm = t.detail.get("p_holm")
        rows.append([t.label or "-", t.test, f"{t.statistic_name} = {t.statistic:.4g}", format_p(t.p_value),
                     "" if holm is None else format_p(holm), ", ".join(f"{k}={v}" for k, v in t.n.items()),
                     f"{t.effect_name} = {fmt(t.effect_size)}"
                     + (f" [{t.ci[0]:.3f}, {t.ci[1]:.3f}]" if t.ci is not None else "")])
    return Table("Tests between conditions", "table-tests",
                 ["comparison", "test", "statistic", "p", "p (Holm)", "n", "effect size"], rows,
                 "Two-sided tests; Holm adjustment within the family of tests shown when given.")


def grid_report(rows: pd.DataFrame, tests: Sequence[TestResult], title: str = "Experiment grid",
                metrics: Sequence[str] | None = None, group_by: Sequence[str] | None = None,
                tables: dict[str, pd.DataFrame] | None = None, notes: Sequence[str] = ()) -> Document:
    """The grid report's content (pure): mean +- sd per condition, each run, the tests, and extra tables.

    ``rows``: one row per run with label columns (model, image_size, ...) and metric columns (flattened
    metrics.json). ``group_by`` defaults to the label columns (text-valued, not ``run_id``/``seed``/``fold``).
    ``tables``: already formatted tables (e.g. the experiments aggregator's mean +- sd layouts) shown as given.
    """
    if rows.empty:
        raise ReportError("no runs to report")
    metrics = [m for m in (metrics or ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"]) if m in rows]
    if not metrics:
        raise ReportError(f"none of the metrics is a column of the runs table (columns: {list(rows.columns)})")
    groups = list(group_by) if group_by is not None else _group_columns(rows, metrics)
    missing = [g for g in groups if g not in rows.columns]
    if missing:
        raise ReportError(f"group_by columns {missing} not in the runs table")
    summary_rows = []
    grouped = rows.groupby(groups, sort=False) if groups else [((), rows)]
    for key, sub in grouped:
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key]
        for m in metrics:
            vals = pd.to_numeric(sub[m], errors="coerce").dropna()
            if vals.empty:
                cells.append("n/a")
            elif len(vals) == 1:
                cells.append(f"{vals.iloc[0]:.3f} (n=1)")
            else:
                cells.append(f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f} (n={len(vals)})")
        summary_rows.append(cells)
    out_tables = [Table("Mean ± sd per condition", "table-summary", [*groups, *metrics], summary_rows,
                        "Sample standard deviation (ddof 1) over the runs of each condition; undefined values are "
                        "left out of n.")]
    for i, (name, frame) in enumerate((tables or {}).items()):
        frame = frame.reset_index()
        out_tables.append(Table(name, f"table-extra-{i}", [str(c) for c in frame.columns],
                                [[fmt(v) for v in r] for r in frame.itertuples(index=False)]))
    if tests:
        out_tables.append(tests_table(tests))
    id_cols = [c for c in ("run_id", "run") if c in rows.columns]
    run_cols = [*id_cols, *groups, *[c for c in ("seed", "fold") if c in rows.columns]]
    out_tables.append(Table("Runs", "table-runs", [*run_cols, *metrics],
                            [[fmt(r[c]) for c in run_cols] + [fmt(_float(r[m])) for m in metrics]
                             for _, r in rows.iterrows()]))
    plots = [Plot(f"{m} per condition", f"fig-grid-{m}", png_data_uri(grid_figure(rows, m, groups)),
                  f"{m} of every run per condition") for m in metrics[:2]]
    return Document(title=title, subtitle=f"{len(rows)} runs, {len(summary_rows)} conditions", kind="grid",
                    plots=plots, tables=out_tables, notes=list(notes))


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


# ------------------------------------------------------------------------------------------------- output


def _env() -> Environment:
    return Environment(loader=PackageLoader("lesionlab.evaluate", "templates"),
                       autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def to_html(document: Document) -> str:
    """The self-contained HTML page (inline CSS and images; no scripts, no external requests)."""
    return _env().get_template("report.html.j2").render(doc=document)


def to_markdown(document: Document) -> str:
    """The same content as Markdown: card, tables and notes (figures only in the HTML)."""
    parts = [f"# {document.title}", "", f"_{document.subtitle}_ - generated {document.generated}", ""]
    parts += [f"> **Warning:** {w}" for w in document.warnings] + ([""] if document.warnings else [])
    if document.card:
        parts += ["## Model card", "", "| field | value |", "|---|---|"]
        parts += ["| " + k + " | " + str(v).replace("|", "\\|") + " |" for k, v in document.card]
        for heading, items in document.card_lists.items():
            parts += ["", f"**{heading}**", "", *[f"- {i}" for i in items]]
        parts.append("")
    parts += ["## Results", ""]
    for t in document.tables:
        parts += [t.markdown(), ""]
    if document.plots:
        parts += [f"Figures ({', '.join(p.title for p in document.plots)}) are in `{HTML_FILE}`.", ""]
    if document.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in document.notes], ""]
    return "\n".join(parts)


def write_report(document: Document, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir`` (atomically); returns their paths."""
    from lesionlab.runs import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"html": atomic_write_text(out_dir / HTML_FILE, to_html(document)),
            "markdown": atomic_write_text(out_dir / MARKDOWN_FILE, to_markdown(document))}


def read_metrics_doc(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json`` written by ``lesionlab evaluate``, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None
    for key in ("n", "classes", "per_class", "confusion_matrix"):
        if not isinstance(doc, dict) or key not in doc:
            raise ReportError(f"{path}: missing field {key!r} (not a metrics.json written by lesionlab evaluate)")
    return doc


def find_eval_dir(path: str | Path) -> Path:
    """An evaluation directory from itself or from a run directory (its newest ``eval*`` subdirectory)."""
    path = Path(path)
    if (path / METRICS_FILE).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"not found: {path}")
    candidates = sorted((p for p in path.glob("eval*") if (p / METRICS_FILE).is_file()),
                        key=lambda p: (p / METRICS_FILE).stat().st_mtime)
    if not candidates:
        raise ReportError(f"{path}: no {METRICS_FILE} here or in an eval*/ subdirectory; run `lesionlab evaluate "
                          f"{path}` first")
    return candidates[-1]


def render_run_report(path: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Render the report of an evaluation (or run) directory; written beside its metrics unless ``out_dir``."""
    eval_dir = find_eval_dir(path)
    doc = read_metrics_doc(eval_dir / METRICS_FILE)
    predictions = read_predictions(eval_dir / PREDICTIONS_FILE, doc["classes"])
    gallery = eval_dir / str(((doc.get("robustness") or {}).get("gallery") or {}).get("file", ""))
    gallery_png = gallery.read_bytes() if doc.get("robustness") and gallery.is_file() else None
    return write_report(run_report(doc, predictions, gallery_png), out_dir or eval_dir)


def render_grid_dir(path: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Report of an aggregated grid directory (``results.csv``, optional ``tests.json`` and ``tables/*.csv``)."""
    path = Path(path)
    results = path / GRID_RESULTS_FILE
    try:
        rows = pd.read_csv(results)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportError(f"{results}: not a readable CSV ({err})") from None
    tests: list[TestResult] = []
    tests_file = path / "tests.json"
    if tests_file.is_file():
        try:
            tests = [TestResult.from_dict(t) for t in json.loads(tests_file.read_text(encoding="utf-8"))]
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ReportError(f"{tests_file}: cannot read saved tests ({err})") from None
    tables = {p.stem.split("_", 1)[-1].replace("_", " "): pd.read_csv(p, index_col=0)
              for p in sorted((path / "tables").glob("*.csv"))}
    return render_grid_report(rows, tests, out_dir or path, title=f"Experiment grid: {path.name}", tables=tables)


def render_grid_report(rows: pd.DataFrame, tests: Sequence[TestResult], out_dir: str | Path,
                       title: str = "Experiment grid", **kwargs: Any) -> dict[str, Path]:
    """Render a grid report (see :func:`grid_report` for ``kwargs``) into ``out_dir``."""
    return write_report(grid_report(rows, tests, title=title, **kwargs), out_dir)
