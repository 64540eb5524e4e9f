"""The report's figures: matplotlib figures (no pyplot, no display) and their inline PNG encoding."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lesionlab.core.metrics import reliability_bins


def png_data_uri(fig: Figure) -> str:
    """Encode a matplotlib figure as ``data:image/png;base64,...`` (no pyplot, no display needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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
