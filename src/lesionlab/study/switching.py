"""Switching and automation bias: how answers change once readers see the model's output.

Switching pairs one reader's answer to a case without the model (``before``) with the same reader's answer to the
same case with it (``after``): the two steps of the ``revise`` design (on one screen), or the unassisted and the
assisted/faulty sessions of the ``crossover`` design (weeks apart; said so). Each pair is one of: kept right, kept
wrong, wrong -> right, right -> wrong, wrong -> another wrong (``changed`` is any change of answer), and the change
went towards the model's output or not. Tallies are given overall, per reader, per true class and by the
confidence of the output shown (its highest probability).

Automation bias (any arm that shows outputs): how often readers' answers equal the shown top class when that output
was wrong (deliberately, in the ``faulty`` arm, or by the model's own mistake) against when it was right, per reader,
with the accuracy of the same readers on both kinds of cases and, where the same cases were also read alone, how
often the readers named that wrong class without the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from lesionlab.evaluate.stats import TestResult
from lesionlab.study.answers import Answers

CONFIDENCE_BINS: tuple[float, ...] = (0.0, 0.5, 0.7, 0.9, 1.0 + 1e-9)
OUTCOMES: tuple[str, ...] = ("kept right", "kept wrong", "wrong -> right", "right -> wrong", "wrong -> other wrong")


@dataclass
class Switching:
    """Switching tables for one pair of conditions (``before`` -> ``after``)."""

    before: str
    after: str
    how: str  # "same screen (revise design)" or "separate sessions (crossover design)"
    pairs: pd.DataFrame  # one row per (participant, case)
    overall: dict[str, Any]
    per_reader: pd.DataFrame
    per_class: pd.DataFrame
    by_confidence: pd.DataFrame


@dataclass
class AutomationBias:
    """Following the shown output when it was wrong against when it was right, in one condition."""

    condition: str
    per_reader: pd.DataFrame
    overall: dict[str, Any]
    tests: list[TestResult] = field(default_factory=list)


def _outcome(before_right: np.ndarray, after_right: np.ndarray, changed: np.ndarray) -> np.ndarray:
    out = np.full(before_right.shape, "kept wrong", dtype=object)
    out[before_right & after_right] = "kept right"
    out[~before_right & after_right] = "wrong -> right"
    out[before_right & ~after_right] = "right -> wrong"
    out[~before_right & ~after_right & changed] = "wrong -> other wrong"
    return out


def switch_pairs(answers: Answers, before: str, after: str) -> pd.DataFrame:
    """Pair each reader's ``before`` and ``after`` answer to the same case (inner join)."""
    cols = ["participant", "case", "truth", "answer", "correct"]
    a = answers.condition(before)[cols]
    b = answers.condition(after)[[*cols, "model_top", "model_confidence", "model_faulty", "model_shown"]]
    pairs = a.merge(b, on=["participant", "case", "truth"], suffixes=("_before", "_after"))
    changed = (pairs["answer_before"] != pairs["answer_after"]).to_numpy()
    pairs["changed"] = changed
    pairs["outcome"] = _outcome(pairs["correct_before"].to_numpy(bool), pairs["correct_after"].to_numpy(bool),
                                changed)
    shown = pairs["model_top"].to_numpy(dtype=object)
    pairs["towards_model"] = changed & (shown != "") & (pairs["answer_after"].to_numpy(dtype=object) == shown)
    conf = pairs["model_confidence"].to_numpy(dtype=np.float64)
    labels = [f"{lo:.1f}-{min(hi, 1.0):.1f}" for lo, hi in itertools.pairwise(CONFIDENCE_BINS)]
    idx = np.digitize(conf, CONFIDENCE_BINS[1:-1])
    pairs["confidence_bin"] = np.where(np.isnan(conf), "no output", np.asarray(labels, dtype=object)[
        np.clip(idx, 0, len(labels) - 1)])
    return pairs


def _tally(sub: pd.DataFrame) -> dict[str, Any]:
    n = len(sub)
    counts = {o: int((sub["outcome"] == o).sum()) for o in OUTCOMES}
    changed = int(sub["changed"].sum())
    return {"pairs": n, "changed": changed, "change_rate": changed / n if n else None, **counts,
            "towards_model": int(sub["towards_model"].sum()),
            "accuracy_before": float(sub["correct_before"].mean()) if n else None,
            "accuracy_after": float(sub["correct_after"].mean()) if n else None,
            "net_gain": (counts["wrong -> right"] - counts["right -> wrong"]) / n if n else None}


def switching(answers: Answers, after: str = "assisted", before: str = "unassisted") -> Switching | None:
    """The switching tables (None where no reader read the same case in both conditions)."""
    if answers.design == "separate" or before not in answers.conditions or after not in answers.conditions:
        return None
    pairs = switch_pairs(answers, before, after)
    if pairs.empty:
        return None
    how = "same screen (revise design: the answer alone, then again beside the model's output)" \
        if answers.design == "revise" else \
        f"separate sessions ({answers.design} design: the same case read {before} and {after})"
    per_reader = pd.DataFrame([{"participant": p, **_tally(s)} for p, s in pairs.groupby("participant", sort=False)])
    per_class = pd.DataFrame([{"truth": c, **_tally(s)} for c, s in pairs.groupby("truth", sort=True)])
    by_conf = pd.DataFrame([{"model_confidence": b, **_tally(s)} for b, s in pairs.groupby("confidence_bin",
                                                                                              sort=True)])
    return Switching(before, after, how, pairs, _tally(pairs), per_reader, per_class, by_conf)


def automation_bias(answers: Answers, condition: str) -> AutomationBias | None:
    """Following wrong against right outputs in a condition that showed the model's output (None otherwise)."""
    sub = answers.condition(condition)
    sub = sub[sub["model_shown"] & (sub["model_top"] != "")]
    if sub.empty:
        return None
    sub = sub.assign(output_wrong=(sub["model_top"] != sub["truth"]).to_numpy(),
                     followed=(sub["answer"] == sub["model_top"]).to_numpy())
    alone = None
    if "unassisted" in answers.conditions and condition != "unassisted":
        alone = answers.condition("unassisted")[["participant", "case", "answer"]].rename(
            columns={"answer": "answer_alone"})
        sub = sub.merge(alone, on=["participant", "case"], how="left")
        sub["chose_alone"] = sub["answer_alone"] == sub["model_top"]
    rows = []
    for p, s in sub.groupby("participant", sort=False):
        wrong, right = s[s["output_wrong"]], s[~s["output_wrong"]]
        row = {"participant": p, "wrong_outputs": len(wrong), "followed_wrong": int(wrong["followed"].sum()),
               "follow_rate_wrong": float(wrong["followed"].mean()) if len(wrong) else None,
               "accuracy_on_wrong": float(wrong["correct"].mean()) if len(wrong) else None,
               "right_outputs": len(right),
               "follow_rate_right": float(right["followed"].mean()) if len(right) else None,
               "accuracy_on_right": float(right["correct"].mean()) if len(right) else None}
        if alone is not None:
            paired = wrong[wrong["answer_alone"].notna()]
            row["same_wrong_class_alone"] = float(paired["chose_alone"].mean()) if len(paired) else None
        rows.append(row)
    table = pd.DataFrame(rows)
    wrong_all = sub[sub["output_wrong"]]
    faulty = sub[sub["model_faulty"]]
    overall = {"answers": len(sub), "wrong_outputs": len(wrong_all),
               "follow_rate_wrong": float(wrong_all["followed"].mean()) if len(wrong_all) else None,
               "follow_rate_right": float(sub[~sub["output_wrong"]]["followed"].mean())
               if (~sub["output_wrong"]).any() else None,
               "deliberately_wrong_outputs": len(faulty),
               "follow_rate_deliberately_wrong": float(faulty["followed"].mean()) if len(faulty) else None,
               "accuracy_on_wrong": float(wrong_all["correct"].mean()) if len(wrong_all) else None,
               "accuracy_on_right": float(sub[~sub["output_wrong"]]["correct"].mean())
               if (~sub["output_wrong"]).any() else None}
    if alone is not None:
        paired = wrong_all[wrong_all["answer_alone"].notna()]
        overall["same_wrong_class_alone"] = float(paired["chose_alone"].mean()) if len(paired) else None
    tests = []
    both = table.dropna(subset=["accuracy_on_wrong", "accuracy_on_right"])
    if len(both) >= 2:
        d = (both["accuracy_on_right"] - both["accuracy_on_wrong"]).to_numpy(dtype=np.float64)
        if (d != 0).any():
            res = sps.wilcoxon(both["accuracy_on_right"].to_numpy(float), both["accuracy_on_wrong"].to_numpy(float))
            stat, p = float(res.statistic), float(res.pvalue)
        else:
            stat, p = 0.0, 1.0
        tests.append(TestResult(
            test="Wilcoxon signed-rank", statistic_name="W", statistic=stat, p_value=p,
            n={"readers": len(both), "non-zero differences": int((d != 0).sum())},
            effect_name="median accuracy difference (right outputs - wrong outputs)", effect_size=float(np.median(d)),
            label=f"accuracy with right vs wrong outputs shown, {condition} (readers paired)"))
    return AutomationBias(condition, table, overall, tests)


def all_switching(answers: Answers) -> list[Switching]:
    """Switching for every arm that shows the model, against reading alone."""
    out = []
    for after in ("assisted", "faulty"):
        res = switching(answers, after=after)
        if res is not None:
            out.append(res)
    return out


def all_automation_bias(answers: Answers, conditions: Sequence[str] | None = None) -> list[AutomationBias]:
    """Automation-bias tables for every condition that showed outputs."""
    out = []
    for cond in conditions or answers.conditions:
        if cond == "unassisted":
            continue
        res = automation_bias(answers, cond)
        if res is not None:
            out.append(res)
    return out
