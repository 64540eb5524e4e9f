"""The reader-study report: readers against the model, alone and assisted, from an answer export.

:func:`analyze` is pure (answers in, every figure and test out); :func:`study_document` turns the analysis into
tables and inline figures; :func:`write_study_report` writes the self-contained ``report.html``, ``report.md``, the
CSV tables and ``analysis.json`` (the project's report conventions, as in :mod:`lesionlab.evaluate.report`).
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.evaluate.report import Plot, Table, fmt, png_data_uri
from lesionlab.evaluate.stats import TestResult, format_p
from lesionlab.study.answers import Answers
from lesionlab.study.comparisons import (
    COMPARED,
    bootstrap_between,
    bootstrap_vs_model,
    condition_matrix,
    mcnemar_vs_model,
    mrmc_across_conditions,
    wilcoxon_tests,
)
from lesionlab.study.mrmc import ORResult
from lesionlab.study.readers import (
    FIGURE_NAMES,
    HEADLINE,
    TIME_FIGURES,
    ModelOnCases,
    format_mean_sd,
    model_cases,
    per_reader,
    summary,
)
from lesionlab.study.switching import OUTCOMES, AutomationBias, Switching, all_automation_bias, all_switching

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
ANALYSIS_FILE = "analysis.json"
ARM_COLORS = {"unassisted": "C0", "assisted": "C2", "faulty": "C3"}
ARM_MARKERS = {"unassisted": "o", "assisted": "s", "faulty": "^"}
SIMULATED_WARNING = ("SIMULATED readers: every answer in this study comes from lesionlab's simulated readers, not from "
                     "people. The figures test the analysis, not any physician.")


# ------------------------------------------------------------------------------------------------ analysis


@dataclass
class StudyAnalysis:
    """Everything the report shows, computed from one answer export."""

    answers: Answers
    per_reader: pd.DataFrame
    summary: pd.DataFrame
    models: dict[str, ModelOnCases]
    confusion: dict[str, np.ndarray]  # condition -> [7, 8] counts (last column: no answer), pooled over readers
    wilcoxon: list[TestResult]
    bootstrap_arms: list[TestResult]
    bootstrap_model: list[TestResult]
    mcnemar: dict[str, list[TestResult]]
    mrmc: dict[str, ORResult]
    switching: list[Switching]
    automation: list[AutomationBias]
    n_boot: int
    seed: int
    alpha: float
    notes: list[str] = field(default_factory=list)

    def headline(self) -> dict[str, Any]:
        """Mean reader figures and the model's per condition (what ``analysis.json`` leads with)."""
        out: dict[str, Any] = {}
        for cond in self.answers.conditions:
            sub = self.per_reader[self.per_reader["condition"] == cond]
            entry = {"readers": len(sub), "cases": int(self.answers.condition(cond)["case"].nunique()),
                     "answers": len(self.answers.condition(cond))}
            for fig in (*HEADLINE, *TIME_FIGURES):
                vals = pd.to_numeric(sub[fig], errors="coerce").dropna()
                entry[f"{fig}_mean"] = float(vals.mean()) if len(vals) else None
                entry[f"{fig}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else None
            model = self.models.get(cond)
            if model is not None:
                entry["model"] = {k: model.figures.get(k) for k in HEADLINE}
                entry["model_outputs"] = "as shown (some deliberately wrong)" if model.faulty_shown else "computed"
            out[cond] = entry
        return out


def _confusion_counts(frame: pd.DataFrame) -> np.ndarray:
    counts = np.zeros((len(CLASS_CODES), len(CLASS_CODES) + 1), dtype=np.int64)
    col = {c: i for i, c in enumerate(CLASS_CODES)}
    for t, a in zip(frame["truth"], frame["answer"], strict=True):
        counts[col[t], col.get(a, len(CLASS_CODES))] += 1
    return counts


def analyze(answers: Answers, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> StudyAnalysis:
    """Per-reader figures, summaries, the model alone, the paired tests, MRMC, switching and automation bias."""
    notes = list(answers.notes)
    conds = list(answers.conditions)
    table = per_reader(answers)
    models = {c: m for c in conds if (m := model_cases(answers, c)) is not None}
    mats = {c: condition_matrix(answers, c) for c in conds}
    if answers.paired_cases and len(conds) > 1:
        shared = sorted(set.intersection(*(set(m.cases) for m in mats.values())))
        if all(len(m.cases) == len(shared) for m in mats.values()):
            mats = {c: condition_matrix(answers, c, shared) for c in conds}
        else:  # revise with a control set read alone only, or with assisted and faulty cases
            sizes = ", ".join(f"{c}: {len(m.cases)}" for c, m in mats.items())
            notes.append(f"the arms cover different cases ({sizes}; {len(shared)} read in every arm): per-reader "
                         "figures use each arm's own cases; the case-paired bootstrap and OR-Hillis use the cases "
                         "an arm shares with reading alone")
    if answers.design == "separate" and len(conds) > 1:
        notes.append("separate design: each arm has its own cases, so cases are not paired between arms; arms are "
                     "compared with readers-paired tests only (Wilcoxon across readers; bootstrap resampling "
                     "readers jointly and cases independently per arm); no OR-Hillis")
    wil = wilcoxon_tests(table, conds, answers.design) if len(conds) > 1 else []
    boot_arms: list[TestResult] = []
    if len(conds) > 1 and len(answers.participants) > 1:
        base = conds[0]
        for other in conds[1:]:
            pair = mats
            paired = answers.paired_cases and mats[base].cases == mats[other].cases
            if answers.paired_cases and not paired:  # revise with assisted and faulty cases: pair the shared ones
                shared = sorted(set(mats[base].cases) & set(mats[other].cases))
                if len(shared) >= 2:
                    pair = {c: condition_matrix(answers, c, shared) for c in (base, other)}
                    paired = True
            for fig in COMPARED:
                res = bootstrap_between(pair, fig, base, other, paired, n_boot=n_boot, seed=seed)
                if res is None:
                    notes.append(f"no bootstrap of {FIGURE_NAMES[fig].lower()} ({other} vs {base}): undefined in "
                                 "an arm (none of the cases it needs)")
                else:
                    boot_arms.append(res)
    boot_model: list[TestResult] = []
    mcn: dict[str, list[TestResult]] = {}
    for cond, model in models.items():
        mcn[cond] = mcnemar_vs_model(mats[cond], model)
        for fig in ("accuracy", "malignant_sensitivity", "malignant_specificity"):
            res = bootstrap_vs_model(mats[cond], model, fig, n_boot=n_boot, seed=seed)
            if res is not None:
                boot_model.append(res)
    mrmc: dict[str, ORResult] = {}
    if answers.paired_cases and len(conds) > 1:
        mrmc, mrmc_notes = mrmc_across_conditions(answers, conds, alpha=alpha)
        notes += mrmc_notes
        if len(answers.participants) < 2:
            notes.append("one reader: OR-Hillis gives the fixed-reader result only (random readers need at least "
                         "two)")
    if len(answers.participants) < 2:
        notes.append("one reader: no across-reader sd, Wilcoxon test or reader resampling")
    return StudyAnalysis(
        answers=answers, per_reader=table, summary=summary(table, conds), models=models,
        confusion={c: _confusion_counts(answers.condition(c)) for c in conds}, wilcoxon=wil,
        bootstrap_arms=boot_arms, bootstrap_model=boot_model, mcnemar=mcn, mrmc=mrmc,
        switching=all_switching(answers), automation=all_automation_bias(answers), n_boot=n_boot, seed=seed,
        alpha=alpha, notes=notes)


# ------------------------------------------------------------------------------------------------- figures


def roc_readers_figure(analysis: StudyAnalysis) -> Figure:
    """Readers as points (1 - specificity, sensitivity) for malignant vs benign against the model's ROC curve."""
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(6.2, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    computed = [m for m in analysis.models.values() if not m.faulty_shown]
    if computed:
        cases: dict[str, tuple[str, float, str]] = {}
        for m in computed:
            for c, t, s, p in zip(m.cases, m.truth, m.malignant_score, m.pred, strict=True):
                cases[c] = (t, s, p)
        truth = np.isin([v[0] for v in cases.values()], MALIGNANT_CODES)
        score = np.asarray([v[1] for v in cases.values()])
        if truth.any() and (~truth).any():
            fpr, tpr, _ = roc_curve(truth, score)
            from sklearn.metrics import auc

            ax.plot(fpr, tpr, color="black", lw=1.6, label=f"model ROC (AUC {auc(fpr, tpr):.3f}, {len(cases)} cases)")
            call = np.isin([v[2] for v in cases.values()], MALIGNANT_CODES)
            ax.scatter([(call & ~truth).sum() / (~truth).sum()], [(call & truth).sum() / truth.sum()], marker="*",
                       s=220, color="black", zorder=5, label="model operating point (top class)")
    for cond in analysis.answers.conditions:
        sub = analysis.per_reader[analysis.per_reader["condition"] == cond].dropna(
            subset=["malignant_sensitivity", "malignant_specificity"])
        if sub.empty:
            continue
        x = 1 - sub["malignant_specificity"].astype(float)
        y = sub["malignant_sensitivity"].astype(float)
        ax.scatter(x, y, s=28, alpha=0.7, color=ARM_COLORS[cond], marker=ARM_MARKERS[cond],
                   label=f"readers, {cond} (n={len(sub)})")
        ax.scatter([x.mean()], [y.mean()], s=120, color=ARM_COLORS[cond], marker=ARM_MARKERS[cond],
                   edgecolor="black", zorder=4, label=f"mean reader, {cond}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (benign called malignant)")
    ax.set_ylabel("sensitivity (malignant called malignant)")
    ax.set_title(f"Malignant ({', '.join(MALIGNANT_CODES)}) vs benign")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def change_figure(analysis: StudyAnalysis, figure: str = "accuracy") -> Figure:
    """Each reader's figure per arm joined by a line; the model per arm as a black bar."""
    conds = list(analysis.answers.conditions)
    fig = Figure(figsize=(max(4.8, 1.9 * len(conds) + 1.5), 4.6))
    ax = fig.add_subplot(1, 1, 1)
    wide = analysis.per_reader.pivot(index="participant", columns="condition", values=figure)
    wide = wide.reindex(columns=conds)
    x = np.arange(len(conds))
    for _, row in wide.iterrows():
        vals = row.to_numpy(dtype=np.float64)
        delta = vals[-1] - vals[0] if len(vals) > 1 else 0.0
        color = "C2" if delta > 0 else ("C3" if delta < 0 else "grey")
        ax.plot(x, vals, color=color, alpha=0.55, lw=1.1, marker="o", ms=3.5)
    means = wide.mean(axis=0).to_numpy(dtype=np.float64)
    ax.plot(x, means, color="black", lw=2.4, marker="D", ms=7, label="mean reader")
    for i, cond in enumerate(conds):
        m = analysis.models.get(cond)
        if m is not None and m.figures.get(figure) is not None:
            ax.hlines(m.figures[figure], i - 0.25, i + 0.25, color="black", lw=3, linestyles=":",
                      label="model (same cases)" if i == 0 else None)
    ax.set_xticks(x, conds)
    ax.set_xlim(-0.5, len(conds) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel(FIGURE_NAMES.get(figure, figure))
    ax.set_title(f"{FIGURE_NAMES.get(figure, figure)} per reader and arm (green: up, red: down)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def confusion_panels(analysis: StudyAnalysis) -> Figure:
    """Pooled confusion matrices per arm, normalised per true class, with a column for no answer."""
    conds = list(analysis.answers.conditions)
    fig = Figure(figsize=(5.2 * len(conds), 4.6))
    cols = [*CLASS_CODES, "none"]
    for i, cond in enumerate(conds):
        ax = fig.add_subplot(1, len(conds), i + 1)
        counts = analysis.confusion[cond]
        support = counts.sum(axis=1, keepdims=True)
        norm = np.divide(counts, support, out=np.full(counts.shape, np.nan), where=support > 0)
        ax.imshow(np.ma.masked_invalid(norm), cmap="Blues", vmin=0, vmax=1)
        for r in range(norm.shape[0]):
            for c in range(norm.shape[1]):
                v = norm[r, c]
                ax.text(c, r, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if np.isfinite(v) and v > 0.6 else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=45)
        ax.set_yticks(range(len(CLASS_CODES)), [f"{c} ({int(s)})" for c, s in zip(CLASS_CODES, support[:, 0],
                                                                                  strict=True)])
        ax.set_xlabel("readers' answer")
        ax.set_ylabel("true class (answers)")
        ax.set_title(f"{cond}: {int(counts.sum())} answers")
    fig.tight_layout()
    return fig


def class_sensitivity_figure(analysis: StudyAnalysis) -> Figure:
    """Per-class sensitivity: the readers' mean (+- sd) per arm as bars, the model per arm as diamonds."""
    conds = list(analysis.answers.conditions)
    fig = Figure(figsize=(9, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(CLASS_CODES))
    width = 0.8 / max(1, len(conds))
    for i, cond in enumerate(conds):
        sub = analysis.per_reader[analysis.per_reader["condition"] == cond]
        means, sds = [], []
        for code in CLASS_CODES:
            vals = pd.to_numeric(sub[f"sens_{code}"], errors="coerce").dropna()
            means.append(vals.mean() if len(vals) else np.nan)
            sds.append(vals.std(ddof=1) if len(vals) > 1 else 0.0)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, np.nan_to_num(means), width=width * 0.92, yerr=sds, capsize=2, color=ARM_COLORS[cond],
               alpha=0.8, label=f"readers, {cond}")
        m = analysis.models.get(cond)
        if m is not None:
            vals = [m.figures.get(f"sens_{c}") for c in CLASS_CODES]
            ax.scatter(pos, [np.nan if v is None else v for v in vals], marker="D", color="black", s=18, zorder=4,
                       label="model" if i == 0 else None)
    ax.set_xticks(x, CLASS_CODES)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("sensitivity")
    ax.set_title("Per-class sensitivity (bars: readers' mean ± sd; diamonds: the model on the same cases)")
    ax.legend(fontsize=8, ncol=4, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _band(ax: Any, y0: tuple[float, float], y1: tuple[float, float], color: str) -> None:
    xs = np.linspace(0.12, 0.88, 60)
    s = (xs - xs[0]) / (xs[-1] - xs[0])
    s = s * s * (3 - 2 * s)
    low = y0[0] + (y1[0] - y0[0]) * s
    high = y0[1] + (y1[1] - y0[1]) * s
    ax.fill_between(xs, low, high, color=color, alpha=0.45, lw=0)


def switching_flow_figure(sw: Switching) -> Figure:
    """Right/wrong before and after seeing the model, with the flows between them (widths: shares of pairs)."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    o = sw.overall
    n = max(1, o["pairs"])
    kr, rw = o["kept right"] / n, o["right -> wrong"] / n
    wr, kw = o["wrong -> right"] / n, (o["kept wrong"] + o["wrong -> other wrong"]) / n
    # left, top to bottom: kept right, right -> wrong | wrong -> right, kept wrong (right before, then wrong);
    # right, top to bottom: kept right, wrong -> right | right -> wrong, kept wrong (right after, then wrong)
    left = {"kr": (1 - kr, 1), "rw": (1 - kr - rw, 1 - kr), "wr": (kw, kw + wr), "kw": (0, kw)}
    right = {"kr": (1 - kr, 1), "wr": (1 - kr - wr, 1 - kr), "rw": (kw, kw + rw), "kw": (0, kw)}
    for key, color in (("kr", "C2"), ("wr", "C2"), ("rw", "C3"), ("kw", "grey")):
        if left[key][1] - left[key][0] > 0:
            _band(ax, left[key], right[key], color)
    left_right, right_right = kr + rw, kr + wr
    for x, share in ((0.06, left_right), (0.94, right_right)):
        ax.bar(x, share, 0.12, bottom=1 - share, color="C2")
        ax.bar(x, 1 - share, 0.12, bottom=0, color="C3")
    ax.text(0.06, 1.03, f"{sw.before}\n{100 * left_right:.1f}% right", ha="center", va="bottom", fontsize=8)
    ax.text(0.94, 1.03, f"{sw.after}\n{100 * right_right:.1f}% right", ha="center", va="bottom", fontsize=8)
    ax.text(0.5, -0.1, f"wrong -> right {o['wrong -> right']}  |  right -> wrong {o['right -> wrong']}  |  "
                       f"changed {o['changed']} of {o['pairs']} ({o['towards_model']} towards the model)",
            ha="center", va="top", fontsize=8, transform=ax.transData)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.16, 1.16)
    ax.axis("off")
    ax.set_title(f"Switching: {sw.before} -> {sw.after} (green: right, red/grey: wrong)")
    fig.tight_layout()
    return fig


def switching_confidence_figure(sw: Switching) -> Figure:
    """Wrong -> right and right -> wrong rates by the confidence of the output shown."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    t = sw.by_confidence
    x = np.arange(len(t))
    pairs = t["pairs"].clip(lower=1).to_numpy(dtype=np.float64)
    ax.bar(x - 0.2, t["wrong -> right"] / pairs, 0.38, color="C2", label="wrong -> right")
    ax.bar(x + 0.2, t["right -> wrong"] / pairs, 0.38, color="C3", label="right -> wrong")
    ax.set_xticks(x, [f"{b}\n(n={n})" for b, n in zip(t["model_confidence"], t["pairs"], strict=True)])
    ax.set_xlabel("top probability of the output shown")
    ax.set_ylabel("share of reader-case pairs")
    ax.set_title(f"Changes by the model's confidence ({sw.after})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def automation_figure(ab: AutomationBias) -> Figure:
    """How often each reader's answer equals the shown class, when the output was wrong vs right."""
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    t = ab.per_reader
    rng = np.random.default_rng(0)
    for i, (col, label, color) in enumerate((("follow_rate_right", "output right", "C2"),
                                             ("follow_rate_wrong", "output wrong", "C3"))):
        vals = pd.to_numeric(t[col], errors="coerce").dropna().to_numpy()
        if vals.size:
            ax.bar(i, vals.mean(), 0.6, color=color, alpha=0.35)
            ax.scatter(i + rng.uniform(-0.15, 0.15, vals.size), vals, color=color, s=18, zorder=3,
                       label=f"{label} (readers)")
    if "same_wrong_class_alone" in t:
        vals = pd.to_numeric(t["same_wrong_class_alone"], errors="coerce").dropna().to_numpy()
        if vals.size:
            ax.hlines(vals.mean(), 0.7, 1.3, color="black", linestyles=":", label="same wrong class named alone")
    ax.set_xticks([0, 1], ["output right", "output wrong"])
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("answer = the class shown")
    ax.set_title(f"Following the model's output ({ab.condition}; dots: readers)")
    fig.tight_layout()
    return fig


def mrmc_figure(results: dict[str, ORResult]) -> Figure:
    """OR-Hillis (random readers, random cases) differences between arms with their CIs."""
    rows = []
    for fig_name, res in results.items():
        a = res.analyses.get("rrrc") or res.analyses["frrc"]
        for d in a.differences:
            rows.append((f"{fig_name}: {d.label}", d.estimate, d.low, d.high))
    fig = Figure(figsize=(7, 0.45 * max(1, len(rows)) + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    for i, (_label, est, low, high) in enumerate(rows):
        ax.plot([low, high], [i, i], color="C0", lw=2)
        ax.scatter([est], [i], color="C0", zorder=3)
    ax.axvline(0, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("difference between arms (first - second), 95% CI")
    ax.set_title("OR-Hillis MRMC (random readers and cases)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------------- tables


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * float(v):.1f}%"


def summary_table(analysis: StudyAnalysis) -> Table:
    """Table 4 of the HAM10000 study, extended: mean ± sd across readers per arm, and the model on the same cases."""
    conds = list(analysis.answers.conditions)
    cols = ["figure"]
    for c in conds:
        cols.append(f"readers, {c}")
        if c in analysis.models:
            cols.append(f"model, {c} cases" + (" (as shown)" if analysis.models[c].faulty_shown else ""))
    figures = [*HEADLINE, *(f"{k}_{c}" for k in ("sens", "spec") for c in CLASS_CODES), *TIME_FIGURES]
    full = summary(analysis.per_reader, conds, figures)
    rows = []
    for _, r in full.iterrows():
        fig = r["figure"]
        cells = [FIGURE_NAMES.get(fig, fig)]
        for c in conds:
            if fig in ("time_mean_s", "time_median_s"):
                m, s, n = r[f"{c}_mean"], r[f"{c}_sd"], r[f"{c}_n"]
                cells.append("n/a" if m is None or pd.isna(m) else f"{m:.1f}" + (f" ± {s:.1f}" if s is not None
                                                                                  and not pd.isna(s) else "")
                             + f" (n={n})")
            else:
                cells.append(format_mean_sd(_none(r[f"{c}_mean"]), _none(r[f"{c}_sd"]), int(r[f"{c}_n"]),
                                            percent=True))
            if c in analysis.models:
                cells.append("" if fig in TIME_FIGURES else _pct(analysis.models[c].figures.get(fig)))
        rows.append(cells)
    return Table("Readers and the model per arm (mean ± sd across readers)", "table-summary", cols, rows,
                 "Layout of the HAM10000 study's Table 4: the mean over readers ± the sample sd (ddof 1); n = readers "
                 "for whom the figure is defined. The model column is the model alone on the same cases (its "
                 "highest-probability class). A time-out without an answer counts as wrong.")


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def reader_table(analysis: StudyAnalysis) -> Table:
    """One row per reader and arm."""
    cols = ["participant", "arm", "answers", "accuracy", "balanced acc.", "mel sens.", "malignant sens.",
            "malignant spec.", "time mean (s)", "time-outs"]
    rows = []
    for _, r in analysis.per_reader.iterrows():
        rows.append([r["participant"], r["condition"], fmt(int(r["n"])), _pct(r["accuracy"]),
                     _pct(r["balanced_accuracy"]), _pct(r["mel_sensitivity"]), _pct(r["malignant_sensitivity"]),
                     _pct(r["malignant_specificity"]), fmt(_none(r["time_mean_s"]), 1), _pct(r["timeout_rate"])])
    return Table("Each reader", "table-readers", cols, rows, "n/a: the reader's cases have none of the class the "
                 "figure needs.")


def model_table(analysis: StudyAnalysis) -> Table | None:
    """The model alone on each arm's cases."""
    if not analysis.models:
        return None
    rows = []
    for cond, m in analysis.models.items():
        f = m.figures
        rows.append([cond, fmt(len(m.cases)), _pct(f["accuracy"]), _pct(f["balanced_accuracy"]),
                     _pct(f["mel_sensitivity"]), _pct(f["malignant_sensitivity"]), _pct(f["malignant_specificity"]),
                     "as shown (some deliberately wrong)" if m.faulty_shown else "computed at study creation"])
    return Table("The model alone on the same cases", "table-model",
                 ["arm", "cases", "accuracy", "balanced acc.", "mel sens.", "malignant sens.", "malignant spec.",
                  "outputs"], rows, "The model's class is its highest probability; malignant = akiec, bcc, mel.")


def test_rows(tests: Sequence[TestResult]) -> list[list[str]]:
    """Rows of comparison, test, statistic, p (Holm), sizes and effect size with CI."""
    rows = []
    for t in tests:
        holm = t.detail.get("p_holm")
        effect = "undefined" if t.effect_size is None else f"{t.effect_size:.3f}"
        if t.ci is not None:
            effect += f" [{t.ci[0]:.3f}, {t.ci[1]:.3f}]"
        rows.append([t.label or "-", t.test, f"{t.statistic_name} = {t.statistic:.4g}", format_p(t.p_value),
                     "" if holm is None else format_p(holm), ", ".join(f"{k}={v}" for k, v in t.n.items()),
                     f"{t.effect_name} = {effect}"])
    return rows


TEST_COLUMNS = ["comparison", "test", "statistic", "p", "p (Holm)", "n", "effect size [95% CI]"]


def mrmc_tables(analysis: StudyAnalysis) -> list[Table]:
    """Per figure of merit: the three OR-Hillis analyses, and each arm's mean with its CI."""
    out = []
    for name, res in analysis.mrmc.items():
        rows = []
        for a in res.analyses.values():
            test = a.test
            if test is None:
                stat = "n/a"
            elif test.statistic is None:
                stat = f"undefined: {test.undefined}"
            else:
                df = f"df {test.ndf:g}" if test.ddf is None else f"df ({test.ndf:g}, {test.ddf:.2f})"
                stat = f"{test.statistic_name} = {test.statistic:.4f}, {df}, {format_p(test.p_value)}"
            for d in a.differences:
                rows.append([a.title, stat, d.label, f"{d.estimate:.4f}", fmt(d.se, 4),
                             f"{d.low:.4f} – {d.high:.4f}"])
        cov = res.covariances
        means = "; ".join(f"{m.label} {m.estimate:.3f} ({m.low:.3f} – {m.high:.3f})"
                          for m in (res.analyses.get("rrrc") or res.analyses["frrc"]).modality_means)
        note = (f"{res.fom_description}; {len(res.readers)} readers x {res.n_cases} cases. Var {cov.var:.3g}, Cov1 "
                f"{fmt(cov.cov1, 6)}, Cov2 {fmt(cov.cov2, 6)}, Cov3 {fmt(cov.cov3, 6)}; MS(T:R) {fmt(res.ms_tr, 6)}. "
                f"Arm means (95% CI): {means}. " + " ".join(res.notes))
        out.append(Table(f"OR-Hillis MRMC: {FIGURE_NAMES.get(name, name.replace('_', ' '))}",
                         f"table-mrmc-{name.replace('_', '-')}",
                         ["analysis", "test", "difference", "estimate", "SE", "95% CI"], rows, note))
    return out


def switching_tables(sw: Switching) -> list[Table]:
    """Overall and per-class, per-confidence and per-reader switching tallies."""
    key = sw.after
    cols = ["pairs", "changed", *OUTCOMES, "towards_model", "accuracy_before", "accuracy_after"]

    def fmt_row(first: str, r: Any) -> list[str]:
        return [first] + [fmt(int(r[c])) if c not in ("accuracy_before", "accuracy_after") else _pct(r[c])
                          for c in cols]

    header = ["", *[c.replace("_", " ") for c in cols]]
    out = [Table(f"Switching {sw.before} -> {sw.after}: overall", f"table-switch-{key}", header,
                 [fmt_row("all", sw.overall)], f"{sw.how}. One pair = one reader's two answers to one case. "
                 "'towards model': the new answer is the class the model showed.")]
    out.append(Table(f"Switching {sw.before} -> {sw.after}: per true class", f"table-switch-{key}-class", header,
                     [fmt_row(r["truth"], r) for _, r in sw.per_class.iterrows()]))
    out.append(Table(f"Switching {sw.before} -> {sw.after}: by the model's confidence",
                     f"table-switch-{key}-confidence", header,
                     [fmt_row(r["model_confidence"], r) for _, r in sw.by_confidence.iterrows()],
                     "Confidence: the top probability of the output shown with the second answer."))
    out.append(Table(f"Switching {sw.before} -> {sw.after}: per reader", f"table-switch-{key}-reader", header,
                     [fmt_row(r["participant"], r) for _, r in sw.per_reader.iterrows()]))
    return out


def automation_tables(ab: AutomationBias) -> list[Table]:
    """Following wrong and right outputs, overall and per reader."""
    o = ab.overall
    rows = [["outputs shown", fmt(o["answers"])], ["wrong outputs (model's own mistakes and deliberate ones)",
                                                      fmt(o["wrong_outputs"])],
            ["answer = shown class, when the output was wrong", _pct(o["follow_rate_wrong"])],
            ["answer = shown class, when the output was right", _pct(o["follow_rate_right"])],
            ["deliberately wrong outputs (faulty arm)", fmt(o["deliberately_wrong_outputs"])],
            ["answer = shown class, deliberately wrong outputs", _pct(o["follow_rate_deliberately_wrong"])],
            ["accuracy with a wrong output shown", _pct(o["accuracy_on_wrong"])],
            ["accuracy with a right output shown", _pct(o["accuracy_on_right"])]]
    if "same_wrong_class_alone" in o:
        rows.append(["same readers named that wrong class alone (same cases)", _pct(o["same_wrong_class_alone"])])
    out = [Table(f"Automation bias: {ab.condition}", f"table-automation-{ab.condition}", ["", "value"], rows,
                 "Automation bias: answering the class a wrong output showed. Compare the follow rate on wrong "
                 "outputs with how often the same readers named that class without the model.")]
    t = ab.per_reader
    cols = [c for c in ("wrong_outputs", "followed_wrong", "follow_rate_wrong", "accuracy_on_wrong", "right_outputs",
                        "follow_rate_right", "accuracy_on_right", "same_wrong_class_alone") if c in t]
    out.append(Table(f"Automation bias per reader: {ab.condition}", f"table-automation-{ab.condition}-reader",
                     ["participant", *[c.replace("_", " ") for c in cols]],
                     [[r["participant"], *[(_pct(r[c]) if "rate" in c or "accuracy" in c or "alone" in c
                                            else fmt(int(r[c]))) for c in cols]] for _, r in t.iterrows()]))
    if ab.tests:
        out.append(Table(f"Automation bias test: {ab.condition}", f"table-automation-{ab.condition}-test",
                         TEST_COLUMNS, test_rows(ab.tests)))
    return out


# ------------------------------------------------------------------------------------------------ document


@dataclass
class Section:
    """A titled group of figures and tables."""

    title: str
    testid: str
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    text: str = ""


@dataclass
class StudyDocument:
    """What the report template renders."""

    title: str
    subtitle: str
    warnings: list[str]
    card: list[tuple[str, str]]
    sections: list[Section]
    notes: list[str]
    generated: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def study_card(analysis: StudyAnalysis) -> list[tuple[str, str]]:
    """The study at a glance."""
    a = analysis.answers
    f = a.frame
    arms = "; ".join(f"{c}: {a.condition(c)['case'].nunique()} cases, {len(a.condition(c))} answers"
                     for c in a.conditions)
    runs = sorted({r for r in f["model_run"].unique() if r})
    people = f"{len(a.participants)} " + ("SIMULATED readers (not people)" if a.simulated else "participants")
    design = {"separate": "separate (each arm its own cases: cases not paired between arms)",
              "crossover": "crossover (every case read in every arm: fully crossed MRMC when complete)",
              "revise": "revise (an answer alone, then again beside the model's output, on one screen)"}[a.design]
    return [("Study", a.study), ("Answers from", a.source), ("Design", design), ("Readers", people),
            ("Arms", arms), ("Model", ", ".join(runs) if runs else "none in the export"),
            ("Time-outs", f"{int(f['timed_out'].sum())} of {len(f)} answers ({_pct(f['timed_out'].mean())}); policy: "
                          + ("counted wrong" if a.timeouts == "wrong" else "left out")),
            ("Statistics", f"two-sided tests, alpha {analysis.alpha:g}; bootstrap {analysis.n_boot} replicates "
                           f"(seed {analysis.seed}), cases resampled within their true class")]


def study_document(analysis: StudyAnalysis, title: str | None = None) -> StudyDocument:
    """Tables and inline figures of the report (pure, apart from drawing the figures)."""
    a = analysis.answers
    warnings_: list[str] = []
    if a.simulated:
        warnings_.append(SIMULATED_WARNING)
    elif a.frame["simulated"].any():
        warnings_.append("Some answers come from SIMULATED readers (simulated = true), not people.")
    if a.design == "separate" and len(a.conditions) > 1:
        warnings_.append("Cases differ between arms (separate design): the arms are compared with readers-paired "
                         "tests only; case-paired tests and OR-Hillis do not apply.")
    sections = []
    plots = [Plot("Readers against the model's ROC curve", "fig-roc-readers", png_data_uri(roc_readers_figure(
        analysis)), "readers as points against the model's malignant-vs-benign ROC curve")]
    if len(a.conditions) > 1:
        plots.append(Plot("Per-reader change between arms", "fig-reader-change", png_data_uri(change_figure(
            analysis)), "each reader's accuracy per arm joined by lines"))
    plots.append(Plot("Per-class sensitivity", "fig-class-sensitivity", png_data_uri(class_sensitivity_figure(
        analysis)), "per-class sensitivity bars per arm with the model"))
    plots.append(Plot("Confusion matrices per arm", "fig-confusion", png_data_uri(confusion_panels(analysis)),
                      "pooled confusion matrices per arm"))
    tables = [summary_table(analysis), reader_table(analysis)]
    mt = model_table(analysis)
    if mt is not None:
        tables.append(mt)
    sections.append(Section("Readers and the model", "section-readers", plots, tables))

    tests_tables = []
    if analysis.wilcoxon:
        tests_tables.append(Table("Arms compared across readers: Wilcoxon signed-rank", "table-wilcoxon",
                                  TEST_COLUMNS, test_rows(analysis.wilcoxon),
                                  "Readers paired (each reader's figure in both arms); two-sided; exact p for small "
                                  "samples without ties. Effect: median of the readers' differences."))
    if analysis.bootstrap_arms:
        tests_tables.append(Table("Arms compared: bootstrap CIs of the difference in mean reader figures",
                                  "table-bootstrap-arms", TEST_COLUMNS, test_rows(analysis.bootstrap_arms),
                                  "Percentile CIs; p from the centred replicates. " +
                                  ("Readers and cases resampled, the same cases in both arms."
                                   if a.paired_cases else "Readers resampled jointly; cases resampled "
                                   "independently per arm (cases are not paired).")))
    if analysis.bootstrap_model:
        tests_tables.append(Table("Readers against the model: bootstrap CIs", "table-bootstrap-model", TEST_COLUMNS,
                                  test_rows(analysis.bootstrap_model),
                                  "Mean reader minus the model on the same cases; readers and cases resampled."))
    for cond, tests in analysis.mcnemar.items():
        if tests:
            tests_tables.append(Table(f"Each reader against the model: McNemar ({cond})", f"table-mcnemar-{cond}",
                                      TEST_COLUMNS, test_rows(tests),
                                      "Per-case right/wrong of the reader against the model on the reader's cases; "
                                      "exact binomial below 25 discordant cases; Holm adjustment across the readers "
                                      "of the arm."))
    if tests_tables:
        sections.append(Section("Paired comparisons", "section-tests", [], tests_tables))
    if analysis.mrmc:
        sections.append(Section("Multi-reader multi-case analysis (OR-Hillis)", "section-mrmc",
                                [Plot("OR-Hillis differences", "fig-mrmc", png_data_uri(mrmc_figure(analysis.mrmc)),
                                      "OR-Hillis differences between arms with 95% CIs")], mrmc_tables(analysis),
                                "Obuchowski-Rockette with Hillis's denominator degrees of freedom; jackknife "
                                "covariances over cases (sensitivity and specificity over their own subsets)."))
    for sw in analysis.switching:
        sections.append(Section(f"Switching after seeing the model ({sw.after})", f"section-switching-{sw.after}",
                                [Plot(f"Switching flows ({sw.after})", f"fig-switching-{sw.after}",
                                      png_data_uri(switching_flow_figure(sw)), "flows between right and wrong"),
                                 Plot(f"Changes by confidence ({sw.after})", f"fig-switching-{sw.after}-confidence",
                                      png_data_uri(switching_confidence_figure(sw)), "changes by model confidence")],
                                switching_tables(sw), sw.how))
    for ab in analysis.automation:
        sections.append(Section(f"Automation bias ({ab.condition})", f"section-automation-{ab.condition}",
                                [Plot(f"Following the model ({ab.condition})", f"fig-automation-{ab.condition}",
                                      png_data_uri(automation_figure(ab)), "follow rates on wrong and right outputs")],
                                automation_tables(ab)))
    subtitle = (f"{a.design} design; {len(a.participants)} {'simulated readers' if a.simulated else 'readers'}; "
                f"arms: {', '.join(a.conditions)}; {a.frame['case'].nunique()} cases")
    return StudyDocument(title=title or f"Reader study: {a.study}", subtitle=subtitle, warnings=warnings_,
                         card=study_card(analysis), sections=sections, notes=list(analysis.notes))


def to_html(doc: StudyDocument) -> str:
    """The self-contained HTML page (inline CSS and images; no scripts, no external requests)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("lesionlab.study", "templates"), undefined=StrictUndefined,
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("analysis_report.html.j2").render(doc=doc)


def to_markdown(doc: StudyDocument) -> str:
    """The same content as Markdown (figures only in the HTML)."""
    parts = [f"# {doc.title}", "", f"_{doc.subtitle}_ - generated {doc.generated}", ""]
    parts += [f"> **Warning:** {w}" for w in doc.warnings] + ([""] if doc.warnings else [])
    parts += ["## Study", "", "| field | value |", "|---|---|"]
    parts += ["| " + k + " | " + str(v).replace("|", "\\|") + " |" for k, v in doc.card]
    parts.append("")
    for s in doc.sections:
        parts += [f"## {s.title}", ""]
        if s.text:
            parts += [s.text, ""]
        for t in s.tables:
            parts += [t.markdown(), ""]
        if s.plots:
            parts += [f"Figures ({', '.join(p.title for p in s.plots)}) are in `{HTML_FILE}`.", ""]
    if doc.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in doc.notes], ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------- writing


def _tests_frame(analysis: StudyAnalysis) -> pd.DataFrame:
    rows = []
    groups: list[tuple[str, Sequence[TestResult]]] = [("wilcoxon", analysis.wilcoxon),
                                                      ("bootstrap_arms", analysis.bootstrap_arms),
                                                      ("bootstrap_model", analysis.bootstrap_model)]
    groups += [(f"mcnemar_{c}", t) for c, t in analysis.mcnemar.items()]
    groups += [(f"mrmc_{k}", r.tests()) for k, r in analysis.mrmc.items()]
    groups += [(f"automation_{ab.condition}", ab.tests) for ab in analysis.automation]
    for group, tests in groups:
        for t in tests:
            rows.append({"group": group, "comparison": t.label, "test": t.test, "statistic_name": t.statistic_name,
                         "statistic": t.statistic, "p_value": t.p_value, "p_holm": t.detail.get("p_holm"),
                         "n": "; ".join(f"{k}={v}" for k, v in t.n.items()), "effect_name": t.effect_name,
                         "effect_size": t.effect_size, "ci_low": None if t.ci is None else t.ci[0],
                         "ci_high": None if t.ci is None else t.ci[1], "text": str(t)})
    return pd.DataFrame(rows)


def analysis_dict(analysis: StudyAnalysis) -> dict[str, Any]:
    """The JSON summary: headline figures per arm, every test, MRMC results, switching and notes."""
    a = analysis.answers
    return {
        "study": a.study, "design": a.design, "source": a.source, "simulated": a.simulated,
        "participants": list(a.participants), "conditions": list(a.conditions), "timeouts": a.timeouts,
        "headline": analysis.headline(),
        "tests": _tests_frame(analysis).to_dict(orient="records"),
        "mrmc": {k: r.to_dict() for k, r in analysis.mrmc.items()},
        "switching": {sw.after: sw.overall for sw in analysis.switching},
        "automation_bias": {ab.condition: ab.overall for ab in analysis.automation},
        "notes": list(analysis.notes),
    }


def write_study_report(analysis: StudyAnalysis, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``analysis.json`` and the CSV tables into ``out_dir`` (atomically)."""
    from lesionlab.core.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # matplotlib's tight_layout notes are not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        doc = study_document(analysis, title)
    paths = {"html": atomic_write_text(out / HTML_FILE, to_html(doc)),
             "markdown": atomic_write_text(out / MARKDOWN_FILE, to_markdown(doc)),
             "analysis": atomic_write_json(out / ANALYSIS_FILE, analysis_dict(analysis)),
             "per_reader": atomic_write_text(out / "per_reader.csv", analysis.per_reader.to_csv(index=False)),
             "summary": atomic_write_text(out / "summary.csv", analysis.summary.to_csv(index=False)),
             "tests": atomic_write_text(out / "tests.csv", _tests_frame(analysis).to_csv(index=False))}
    if analysis.models:
        model_rows = [{"condition": c, "cases": len(m.cases), "outputs": "shown" if m.faulty_shown else "computed",
                       **m.figures} for c, m in analysis.models.items()]
        paths["model"] = atomic_write_text(out / "model.csv", pd.DataFrame(model_rows).to_csv(index=False))
    for sw in analysis.switching:
        paths[f"switching_{sw.after}"] = atomic_write_text(out / f"switching_{sw.after}.csv",
                                                           sw.pairs.to_csv(index=False))
    for ab in analysis.automation:
        paths[f"automation_{ab.condition}"] = atomic_write_text(out / f"automation_{ab.condition}.csv",
                                                                ab.per_reader.to_csv(index=False))
    if analysis.mrmc:
        paths["mrmc"] = atomic_write_json(out / "mrmc.json", {k: r.to_dict() for k, r in analysis.mrmc.items()})
    return paths
