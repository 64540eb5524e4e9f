"""Per-reader figures per condition, their mean +- sd across readers, and the model alone on the same cases.

Every figure is a pure function of answer codes and truths (``""`` = no answer). Sensitivity of a class is the share
of its cases answered with it; specificity the share of the other cases answered with another class (a missing
answer is not a correct rejection: a time-out is an error everywhere). "Malignant" calls are answers in
:data:`lesionlab.classes.MALIGNANT_CODES` (akiec, bcc, mel). A figure without the cases that define it (no
melanoma among a reader's cases) is ``None`` with the reason kept, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.study.answers import Answers

#: The headline figures, in the order of the summary table (Table 4 of the HAM10000 study, extended).
HEADLINE: tuple[str, ...] = ("accuracy", "balanced_accuracy", "mel_sensitivity", "mel_specificity",
                             "malignant_sensitivity", "malignant_specificity")
TIME_FIGURES: tuple[str, ...] = ("time_mean_s", "time_median_s", "timeout_rate")
FIGURE_NAMES: dict[str, str] = {
    "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "mel_sensitivity": "Melanoma sensitivity",
    "mel_specificity": "Melanoma specificity", "malignant_sensitivity": "Malignant sensitivity",
    "malignant_specificity": "Malignant specificity", "time_mean_s": "Time per case, mean (s)",
    "time_median_s": "Time per case, median (s)", "timeout_rate": "Time-out rate",
    **{f"sens_{c}": f"Sensitivity {c}" for c in CLASS_CODES}, **{f"spec_{c}": f"Specificity {c}" for c in CLASS_CODES},
}


def _rate(hits: np.ndarray, mask: np.ndarray) -> float | None:
    n = int(mask.sum())
    return float(hits[mask].mean()) if n else None


def answer_figures(answers: Sequence[str], truths: Sequence[str]) -> dict[str, float | None]:
    """Accuracy, balanced accuracy, per-class, melanoma and malignant sensitivity/specificity of one answer set."""
    a = np.asarray(answers, dtype=object)
    t = np.asarray(truths, dtype=object)
    answered = a != ""
    out: dict[str, float | None] = {"n": int(a.size), "accuracy": float((a == t).mean()) if a.size else None}
    sens = []
    for c in CLASS_CODES:
        s = _rate(a == c, t == c)
        out[f"sens_{c}"] = s
        out[f"spec_{c}"] = _rate((a != c) & answered, t != c)
        if s is not None:
            sens.append(s)
    out["balanced_accuracy"] = float(np.mean(sens)) if sens else None
    out["mel_sensitivity"], out["mel_specificity"] = out["sens_mel"], out["spec_mel"]
    mal_truth = np.isin(t, MALIGNANT_CODES)
    mal_call = np.isin(a, MALIGNANT_CODES)
    out["malignant_sensitivity"] = _rate(mal_call, mal_truth)
    out["malignant_specificity"] = _rate(~mal_call & answered, ~mal_truth)
    return out


def undefined_reason(figure: str) -> str:
    """Why a figure can be missing."""
    if figure.startswith(("sens_", "mel_sens")):
        code = figure.split("_", 1)[1] if figure.startswith("sens_") else "mel"
        return f"no {code} cases"
    if figure.startswith(("spec_", "mel_spec")):
        return "no cases of the other classes"
    if figure == "malignant_sensitivity":
        return "no malignant cases"
    if figure == "malignant_specificity":
        return "no benign cases"
    return "no cases"


def per_reader(answers: Answers) -> pd.DataFrame:
    """One row per (participant, condition): every figure plus time per case and time-out rate."""
    rows = []
    frame = answers.frame
    for (participant, condition), sub in frame.groupby(["participant", "condition"], sort=False):
        figs = answer_figures(sub["answer"].tolist(), sub["truth"].tolist())
        times = sub["time_s"].dropna()
        rows.append({"participant": participant, "condition": condition, **figs,
                     "n": len(sub), "n_cases": int(sub["case"].nunique()),
                     "time_mean_s": float(times.mean()) if len(times) else None,
                     "time_median_s": float(times.median()) if len(times) else None,
                     "timeout_rate": float(sub["timed_out"].mean()),
                     "simulated": bool(sub["simulated"].all())})
    table = pd.DataFrame(rows)
    order = {c: i for i, c in enumerate(answers.conditions)}
    ranks = {p: i for i, p in enumerate(answers.participants)}
    return table.sort_values(by=["condition", "participant"],
                             key=lambda s: s.map(order) if s.name == "condition" else s.map(ranks)
                             ).reset_index(drop=True)


@dataclass(frozen=True)
class ModelOnCases:
    """The model alone on one condition's cases (its highest-probability class per case)."""

    condition: str
    cases: tuple[str, ...]
    truth: np.ndarray
    pred: np.ndarray
    malignant_score: np.ndarray
    figures: dict[str, float | None]
    faulty_shown: bool  # the outputs are what the faulty arm showed (some deliberately wrong)


def model_cases(answers: Answers, condition: str) -> ModelOnCases | None:
    """The model's output per case of a condition (None without model outputs).

    In the ``faulty`` arm the export holds what was shown; elsewhere the output computed when the study was created.
    """
    if not answers.has_model:
        return None
    sub = answers.condition(condition)
    sub = sub[sub["model_pred"] != ""]
    if sub.empty:
        return None
    per_case = sub.sort_values("model_faulty").drop_duplicates("case")
    per_case = per_case.set_index("case").loc[sorted(per_case["case"].unique())]
    figures = answer_figures(per_case["model_pred"].tolist(), per_case["truth"].tolist())
    return ModelOnCases(condition, tuple(per_case.index), per_case["truth"].to_numpy(dtype=object),
                        per_case["model_pred"].to_numpy(dtype=object),
                        per_case["model_malignant"].to_numpy(dtype=np.float64), figures,
                        bool(per_case["model_faulty"].any()))


def mean_sd(values: Sequence[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample sd (ddof 1; None for one value) and count of the defined values."""
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return None, None, 0
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else None, int(vals.size)


def summary(per_reader_table: pd.DataFrame, conditions: Sequence[str],
            figures: Sequence[str] = (*HEADLINE, *TIME_FIGURES)) -> pd.DataFrame:
    """Mean, sd and n across readers per condition and figure (the layout of the HAM10000 study's Table 4)."""
    rows = []
    for fig in figures:
        row: dict[str, Any] = {"figure": fig}
        for cond in conditions:
            sub = per_reader_table[per_reader_table["condition"] == cond]
            m, s, n = mean_sd(sub[fig].tolist()) if fig in sub else (None, None, 0)
            row[f"{cond}_mean"], row[f"{cond}_sd"], row[f"{cond}_n"] = m, s, n
        rows.append(row)
    return pd.DataFrame(rows)


def format_mean_sd(mean: float | None, sd: float | None, n: int, percent: bool = False) -> str:
    """``0.277 ± 0.081 (n=22)``; ``n/a`` when undefined."""
    if mean is None:
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    text = f"{mean * scale:.{digits}f}" + ("%" if percent else "")
    if sd is not None:
        text += f" ± {sd * scale:.{digits}f}"
    return text + f" (n={n})"
