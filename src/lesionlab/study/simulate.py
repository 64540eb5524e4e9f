"""Simulated readers: an answer export (the platform's columns, ``simulated`` true in every row) from a confusion model.

Nothing here is a person. Each simulated reader ``j`` reading case ``k`` of true class ``y``:

1. answers right alone with probability ``sigmoid(skill + s_j - d_k + class_skill[y])``: reader skill ``s_j ~
   N(0, skill_sd)``, case difficulty ``d_k ~ N(0, difficulty_sd)`` (the same case is as hard in every arm);
   otherwise names a wrong class drawn from :data:`CONFUSION` (where readers' mistakes go: melanoma for naevi,
   naevi for melanoma, ...), a plausible pattern chosen for the simulation, not estimated from data;
2. with the model's output on screen, adopts the shown top class with probability ``sigmoid(reliance + q_j +
   reliance_slope * (top_probability - 0.5))`` (reliance ``q_j ~ N(0, reliance_sd)``), else keeps its own answer;
3. takes ``exp(log(time_median_s) + v_j + time_difficulty * d_k + e)`` seconds (speed ``v_j ~ N(0, speed_sd)``,
   ``e ~ N(0, time_sd)``; ``assisted_time_factor`` longer beside the model); past the time limit the page moves on
   and the answer is empty (a time-out);
4. gives a malignancy confidence (0-100) from a latent score that separates malignant from benign cases by
   ``separation + s_j``, leans towards its own answer and, when it adopted the model, towards the model's malignant
   probability.

:func:`calibrate` sets ``skill`` and ``reliance`` so that the expected accuracy alone and with the model (time-outs
included) equal given targets for the drawn readers and cases: how the HAM10000 study's published
general-practitioner figures are matched (:mod:`lesionlab.study.simulated_contests`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import special as spspecial
from scipy import stats as sps

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.core.errors import MissingFileError
from lesionlab.study.analysis_errors import ExportError, StudyAnalysisError
from lesionlab.study.columns import (
    DESIGNS,
    EXPORT_COLUMNS,
    MODEL_PROB_COLUMNS,
    answer_steps,
    arm_case_sets,
    model_on_screen,
    session_of,
)

#: Where a wrong answer goes, per true class (weights over the other classes; normalised on use).
CONFUSION: dict[str, dict[str, float]] = {
    "akiec": {"bcc": 0.30, "bkl": 0.35, "mel": 0.15, "nv": 0.10, "df": 0.05, "vasc": 0.05},
    "bcc": {"akiec": 0.25, "bkl": 0.30, "nv": 0.20, "mel": 0.10, "df": 0.10, "vasc": 0.05},
    "bkl": {"mel": 0.35, "nv": 0.30, "akiec": 0.15, "bcc": 0.10, "df": 0.05, "vasc": 0.05},
    "df": {"nv": 0.40, "bkl": 0.25, "bcc": 0.15, "mel": 0.10, "akiec": 0.05, "vasc": 0.05},
    "mel": {"nv": 0.50, "bkl": 0.30, "bcc": 0.05, "akiec": 0.05, "df": 0.05, "vasc": 0.05},
    "nv": {"mel": 0.40, "bkl": 0.30, "df": 0.10, "bcc": 0.10, "akiec": 0.05, "vasc": 0.05},
    "vasc": {"nv": 0.25, "mel": 0.25, "bcc": 0.20, "bkl": 0.15, "df": 0.10, "akiec": 0.05},
}
CASE_COLUMNS: tuple[str, ...] = ("case", "image_id", "truth")
#: The deliberately wrong outputs a platform study froze for its faulty arm (``cases_frame``), one per class.
FAULTY_PROB_COLUMNS: tuple[str, ...] = tuple(f"faulty_p_{code}" for code in CLASS_CODES)
MODEL_ARMS: tuple[str, ...] = ("assisted", "faulty")
START = _dt.datetime(2025, 1, 6, 9, 0, tzinfo=_dt.timezone.utc)


def _confusion_matrix() -> np.ndarray:
    m = np.zeros((len(CLASS_CODES), len(CLASS_CODES)))
    for i, c in enumerate(CLASS_CODES):
        for other, w in CONFUSION[c].items():
            m[i, CLASS_CODES.index(other)] = w
    return m / m.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ReaderModel:
    """The parameters of the simulated readers (logit scale unless said otherwise; see the module docstring)."""

    skill: float = 0.0
    skill_sd: float = 0.5
    difficulty_sd: float = 1.0
    class_skill: dict[str, float] = field(default_factory=dict)
    reliance: float = -0.5
    reliance_sd: float = 0.8
    reliance_slope: float = 2.0
    separation: float = 1.5
    confidence_noise: float = 1.0
    time_median_s: float = 20.0
    time_sd: float = 0.45
    speed_sd: float = 0.25
    time_difficulty: float = 0.15
    assisted_time_factor: float = 1.15

    def __post_init__(self) -> None:
        for name in ("skill_sd", "difficulty_sd", "reliance_sd", "confidence_noise", "time_sd", "speed_sd"):
            if getattr(self, name) < 0:
                raise StudyAnalysisError(f"reader model: {name} must be >= 0, got {getattr(self, name)}")
        if self.time_median_s <= 0:
            raise StudyAnalysisError(f"reader model: time_median_s must be > 0, got {self.time_median_s}")
        unknown = [c for c in self.class_skill if c not in CLASS_CODES]
        if unknown:
            raise StudyAnalysisError(f"reader model: class_skill for unknown classes {unknown}")

    def class_offsets(self) -> np.ndarray:
        """``class_skill`` as a vector in class order."""
        return np.asarray([self.class_skill.get(c, 0.0) for c in CLASS_CODES], dtype=np.float64)


@dataclass(frozen=True)
class Effects:
    """The random effects of one simulated study: per reader and per case."""

    skill: np.ndarray  # [R]
    reliance: np.ndarray  # [R]
    speed: np.ndarray  # [R]
    difficulty: np.ndarray  # [C]
    case_noise: np.ndarray  # [C] shared malignancy impression of a case


def draw_effects(model: ReaderModel, n_readers: int, n_cases: int, rng: np.random.Generator) -> Effects:
    """Draw reader skill, reliance, speed and case difficulty."""
    return Effects(skill=rng.normal(0, model.skill_sd, n_readers), reliance=rng.normal(0, model.reliance_sd, n_readers),
                   speed=rng.normal(0, model.speed_sd, n_readers), difficulty=rng.normal(0, model.difficulty_sd,
                                                                                            n_cases),
                   case_noise=rng.normal(0, 0.7, n_cases))


# ------------------------------------------------------------------------------------------ probabilities


def p_own_correct(model: ReaderModel, fx: Effects, truth_idx: np.ndarray, cases: np.ndarray | None = None
                  ) -> np.ndarray:
    """``[R, C]`` probability of the right answer alone."""
    d = fx.difficulty if cases is None else fx.difficulty[cases]
    return spspecial.expit(model.skill + fx.skill[:, None] - d[None, :] + model.class_offsets()[truth_idx][None, :])


def p_adopt(model: ReaderModel, fx: Effects, top_prob: np.ndarray) -> np.ndarray:
    """``[R, C]`` probability of adopting the shown top class."""
    return spspecial.expit(model.reliance + fx.reliance[:, None] + model.reliance_slope * (top_prob[None, :] - 0.5))


def log_time_mean(model: ReaderModel, fx: Effects, reading: str, cases: np.ndarray | None = None) -> np.ndarray:
    """``[R, C]`` mean of the log answer time in seconds; ``reading``: ``alone``, ``assisted`` or ``second`` (the
    second answer of the revise design: a short look, about a third of a first reading)."""
    d = fx.difficulty if cases is None else fx.difficulty[cases]
    if reading == "second":
        return np.log(max(2.0, 0.3 * model.time_median_s)) + np.repeat(fx.speed[:, None], d.size, axis=1)
    factor = model.assisted_time_factor if reading == "assisted" else 1.0
    return np.log(model.time_median_s * factor) + fx.speed[:, None] + model.time_difficulty * d[None, :]


def p_timeout(model: ReaderModel, fx: Effects, limit_s: float | None, reading: str,
              cases: np.ndarray | None = None) -> np.ndarray:
    """``[R, C]`` probability that the answer does not arrive within the time limit."""
    mu = log_time_mean(model, fx, reading, cases)
    if limit_s is None:
        return np.zeros_like(mu)
    return sps.norm.sf((np.log(limit_s) - mu) / max(model.time_sd, 1e-9))


def expected_accuracy(model: ReaderModel, fx: Effects, truth_idx: np.ndarray, limit_s: float | None,
                      shown_top: np.ndarray | None = None, shown_prob: np.ndarray | None = None,
                      cases: np.ndarray | None = None, second_look: bool = False) -> float:
    """Expected accuracy over the drawn readers and the given cases (alone when ``shown_top`` is None;
    ``second_look``: the revise design's second answer)."""
    own = p_own_correct(model, fx, truth_idx, cases)
    if shown_top is None:
        right = own
        to = p_timeout(model, fx, limit_s, "alone", cases)
    else:
        adopt = p_adopt(model, fx, shown_prob)
        right = adopt * (shown_top == truth_idx)[None, :] + (1 - adopt) * own
        to = p_timeout(model, fx, limit_s, "second" if second_look else "assisted", cases)
    return float(((1 - to) * right).mean())


# ------------------------------------------------------------------------------------------------ sampling


def draw_answers(model: ReaderModel, fx: Effects, truth_idx: np.ndarray, rng: np.random.Generator,
                 shown: np.ndarray | None = None, limit_s: float | None = None,
                 cases: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One reading of every case by every reader: answer indices (-1: none), own answers, times, confidences.

    ``shown``: ``[C, 7]`` probabilities on screen (None: read alone). ``cases``: which of the drawn cases
    (indices into ``fx.difficulty``) these are. Returns ``[R, C]`` arrays.
    """
    r = fx.skill.size
    c = truth_idx.size
    own_right = rng.random((r, c)) < p_own_correct(model, fx, truth_idx, cases)
    conf = _confusion_matrix()
    cum = np.cumsum(conf[truth_idx], axis=1)  # [C, 7]
    wrong = (rng.random((r, c))[..., None] > cum[None, :, :]).sum(axis=2)
    own = np.where(own_right, truth_idx[None, :], np.minimum(wrong, len(CLASS_CODES) - 1))
    answer = own.copy()
    adopted = np.zeros((r, c), dtype=bool)
    if shown is not None:
        top = shown.argmax(axis=1)
        adopted = rng.random((r, c)) < p_adopt(model, fx, shown.max(axis=1))
        answer = np.where(adopted, top[None, :], own)
    mu = log_time_mean(model, fx, "alone" if shown is None else "assisted", cases)
    seconds = np.exp(mu + rng.normal(0, model.time_sd, (r, c)))
    timed_out = np.zeros((r, c), dtype=bool) if limit_s is None else seconds > limit_s
    mal = np.isin(np.asarray(CLASS_CODES)[truth_idx], MALIGNANT_CODES).astype(np.float64)
    noise = fx.case_noise if cases is None else fx.case_noise[cases]
    latent = ((model.separation + fx.skill[:, None]) * (mal[None, :] - 0.5) + noise[None, :]
              + rng.normal(0, model.confidence_noise, (r, c))
              + 0.8 * (np.isin(np.asarray(CLASS_CODES)[answer], MALIGNANT_CODES) - 0.5))
    if shown is not None:
        mal_cols = [CLASS_CODES.index(m) for m in MALIGNANT_CODES]
        model_mal = np.clip(shown[:, mal_cols].sum(axis=1), 1e-4, 1 - 1e-4)
        latent = np.where(adopted, 0.5 * latent + 0.5 * spspecial.logit(model_mal)[None, :], latent)
    confidence = np.round(100 * spspecial.expit(latent))
    answer = np.where(timed_out, -1, answer)
    seconds = np.where(timed_out, limit_s if limit_s is not None else seconds, seconds)
    return {"answer": answer, "own": own, "adopted": adopted, "seconds": seconds, "timed_out": timed_out,
            "confidence": np.where(timed_out, np.nan, confidence)}


# ---------------------------------------------------------------------------------------------- calibration


def calibrate(model: ReaderModel, fx: Effects, truth_idx: np.ndarray, limit_s: float | None,
              target_alone: float | None = None, target_assisted: float | None = None,
              shown: np.ndarray | None = None, alone_cases: np.ndarray | None = None,
              assisted_cases: np.ndarray | None = None, second_look: bool = False) -> ReaderModel:
    """``skill`` (and ``reliance``) so that the expected accuracy alone (and with ``shown``) hit the targets.

    ``alone_cases`` / ``assisted_cases`` index the cases of each arm (all by default). Errors say when a target is
    out of reach (for example an assisted accuracy above what following this model could give).
    """
    def solve(fn: Any, target: float, what: str, low: float = -12.0, high: float = 12.0) -> float:
        lo, hi = fn(low), fn(high)
        if not min(lo, hi) <= target <= max(lo, hi):
            raise StudyAnalysisError(f"{what} {target:.3f} is out of reach for these cases: the simulated readers "
                                     f"range from {min(lo, hi):.3f} to {max(lo, hi):.3f}")
        return float(optimize.brentq(lambda v: fn(v) - target, low, high, xtol=1e-10))

    alone_idx = np.arange(truth_idx.size) if alone_cases is None else np.asarray(alone_cases)
    if target_alone is not None:
        skill = solve(lambda v: expected_accuracy(replace(model, skill=v), fx, truth_idx[alone_idx], limit_s,
                                                  cases=alone_idx), target_alone, "accuracy alone")
        model = replace(model, skill=skill)
    if target_assisted is not None:
        if shown is None:
            raise StudyAnalysisError("an accuracy with the model needs the model's outputs")
        idx = np.arange(truth_idx.size) if assisted_cases is None else np.asarray(assisted_cases)
        top = shown[idx].argmax(axis=1)
        prob = shown[idx].max(axis=1)
        reliance = solve(lambda v: expected_accuracy(replace(model, reliance=v), fx, truth_idx[idx], limit_s,
                                                     shown_top=top, shown_prob=prob, cases=idx,
                                                     second_look=second_look),
                         target_assisted, "accuracy with the model")
        model = replace(model, reliance=reliance)
    return model


# ------------------------------------------------------------------------------------------------ the cases


def read_cases(path: str | Path) -> pd.DataFrame:
    """A case table (``case, image_id, truth, model_p_<code> x7``, optional ``model_run``), checked."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"case table not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not a readable CSV ({err})") from None
    return check_cases(frame, str(path))


def check_cases(frame: pd.DataFrame, where: str = "cases") -> pd.DataFrame:
    """Typed case table: unique case ids, known truths, model probabilities in [0, 1] summing to 1 (or none)."""
    missing = [c for c in CASE_COLUMNS if c not in frame.columns]
    if missing:
        raise ExportError(f"{where}: missing column(s) {', '.join(missing)}; a case table has case, image_id, truth "
                          f"and optionally {', '.join(MODEL_PROB_COLUMNS)} and model_run")
    if frame.empty:
        raise ExportError(f"{where}: no cases")
    out = pd.DataFrame({"case": frame["case"].astype(str).str.strip(),
                        "image_id": frame["image_id"].astype(str).str.strip(),
                        "truth": frame["truth"].astype(str).str.strip().str.lower()})
    bad = np.flatnonzero(~out["truth"].isin(CLASS_CODES).to_numpy())
    if bad.size:
        raise ExportError(f"{where}: row {int(bad[0]) + 1}: unknown class {frame['truth'].iloc[int(bad[0])]!r} in "
                          f"column 'truth'; expected one of {', '.join(CLASS_CODES)}")
    dup = out["case"].duplicated(keep=False)
    if dup.any():
        raise ExportError(f"{where}: case id(s) {sorted(out.loc[dup, 'case'].unique())[:5]} appear more than once")
    present = [c for c in MODEL_PROB_COLUMNS if c in frame.columns]
    if present and len(present) < len(MODEL_PROB_COLUMNS):
        raise ExportError(f"{where}: model probability column(s) "
                          f"{', '.join(c for c in MODEL_PROB_COLUMNS if c not in frame.columns)} missing")
    if present:
        probs = frame[list(MODEL_PROB_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad_rows = np.flatnonzero(~np.isfinite(probs).all(axis=1) | (probs < -1e-6).any(axis=1)
                                  | (probs > 1 + 1e-6).any(axis=1) | (np.abs(probs.sum(axis=1) - 1) > 1e-3))
        if bad_rows.size:
            raise ExportError(f"{where}: row {int(bad_rows[0]) + 1}: model probabilities must be seven numbers in "
                              "[0, 1] summing to 1")
        probs = np.clip(probs, 0.0, 1.0)  # float rounding only: larger excursions were refused above
        for k, col in enumerate(MODEL_PROB_COLUMNS):
            out[col] = probs[:, k]
    out["model_run"] = frame["model_run"].astype(str).str.strip() if "model_run" in frame.columns else ""
    if "case_set" in frame.columns:  # a platform study's cases (lesionlab.study.export.cases_frame)
        out["case_set"] = frame["case_set"].astype(str).str.strip()
    flags = (frame["faulty"].map(lambda v: str(v).strip().lower() in ("true", "1", "yes"))
             if "faulty" in frame.columns else pd.Series(False, index=frame.index))
    if flags.any() and all(c in frame.columns for c in FAULTY_PROB_COLUMNS):  # a study with a faulty arm
        fprobs = frame[list(FAULTY_PROB_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(flags.to_numpy() & ~np.isfinite(fprobs).all(axis=1))
        if bad.size:
            raise ExportError(f"{where}: row {int(bad[0]) + 1}: a faulty case needs its seven faulty_p_<code> "
                              "probabilities")
        out["faulty"] = flags.to_numpy(dtype=bool)
        for k, col in enumerate(FAULTY_PROB_COLUMNS):
            out[col] = fprobs[:, k]
    return out


def has_model_outputs(cases: pd.DataFrame) -> bool:
    """Whether a case table carries the model's probabilities."""
    return all(c in cases.columns for c in MODEL_PROB_COLUMNS)


def synthetic_model_outputs(truth: Sequence[str], accuracy: float = 0.8, seed: int = 0,
                            sharpness: float = 1.5) -> np.ndarray:
    """A simple SYNTHETIC model: ``[N, 7]`` probabilities whose top class is right for about ``accuracy`` of cases.

    Logits are Gaussian noise plus a margin on the true class (and a smaller one on its most confusable class);
    the margin is solved so that the expected top-1 accuracy equals ``accuracy``. Not a trained network.
    """
    if not 0 < accuracy < 1:
        raise StudyAnalysisError(f"synthetic model accuracy must be between 0 and 1, got {accuracy}")
    idx = np.asarray([CLASS_CODES.index(t) for t in truth])
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (idx.size, len(CLASS_CODES)))
    conf = _confusion_matrix()
    near = conf[idx].argmax(axis=1)

    def logits(margin: float) -> np.ndarray:
        z = noise.copy()
        z[np.arange(idx.size), idx] += margin
        z[np.arange(idx.size), near] += 0.4 * max(margin, 0)
        return z

    def acc(margin: float) -> float:
        return float((logits(margin).argmax(axis=1) == idx).mean())

    # accuracy is a step function of the margin on a finite sample: take the smallest margin that reaches it
    lo, hi = -5.0, 15.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if acc(mid) < accuracy else (lo, mid)
    z = logits(hi) * sharpness
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def study_simulation(study: str | Path, readers: int) -> tuple[pd.DataFrame, SimulationSpec, dict[str, Any]]:
    """What simulated readers of a study created by the platform read: its cases, spec and a description.

    The cases come with their case sets and the model's (and faulty) outputs frozen when the study was created
    (``lesionlab.study.export.cases_frame``); the spec takes the study's design, arms, time limit, answer form and
    faulty fraction, so the simulated export has the layout a platform export of the same study would have.
    """
    from lesionlab.study.export import cases_frame
    from lesionlab.study.folder import open_study

    folder = open_study(study)
    try:
        definition, manifest = folder.definition, folder.manifest
        frame = cases_frame(folder)
    finally:
        folder.close()
    if frame[list(MODEL_PROB_COLUMNS)].isna().all().all():  # a study without a model
        frame = frame.drop(columns=list(MODEL_PROB_COLUMNS))
    cases = check_cases(frame, str(study))
    spec = SimulationSpec(study=definition.name, design=definition.design, arms=tuple(definition.arms),
                          readers=readers, time_limit_s=definition.time_limit_s, confidence=definition.form.confidence,
                          faulty_fraction=definition.faulty.fraction if definition.faulty is not None else 0.3)
    data = manifest.get("data") or {}
    model = manifest.get("model") or {}
    info = {"data": f"study {definition.name} ({study}): {data.get('source', 'unknown data')}",
            "synthetic_data": bool(data.get("synthetic")), "split": ",".join(definition.cases.splits),
            "drawn": "frozen in the study", "n": len(cases), "model": model.get("id") or "none"}
    return cases, spec, info


def draw_cases(table: pd.DataFrame, n: int, seed: int = 0, how: str = "even") -> pd.DataFrame:
    """``n`` rows of a sample table (``image_id``, ``dx``), drawn per class and seeded.

    ``even``: as equal across classes as the table allows (a class with too few images gives all it has and the
    rest is shared among the others); ``prevalence``: in proportion to the classes' frequencies.
    """
    if n > len(table):
        raise StudyAnalysisError(f"{n} cases asked for, only {len(table)} images available")
    rng = np.random.default_rng(seed)
    avail = {c: int((table["dx"] == c).sum()) for c in CLASS_CODES}
    quota = dict.fromkeys(CLASS_CODES, 0)
    if how == "prevalence":
        raw = {c: n * avail[c] / len(table) for c in CLASS_CODES}
        quota = {c: int(np.floor(v)) for c, v in raw.items()}
        for c in sorted(raw, key=lambda k: raw[k] - quota[k], reverse=True)[: n - sum(quota.values())]:
            quota[c] += 1
    elif how == "even":
        left = n
        open_classes = [c for c in CLASS_CODES if avail[c] > 0]
        while left > 0 and open_classes:
            share = max(1, left // len(open_classes))
            for c in list(open_classes):
                take = min(share, avail[c] - quota[c], left)
                quota[c] += take
                left -= take
                if quota[c] >= avail[c]:
                    open_classes.remove(c)
                if left == 0:
                    break
    else:
        raise StudyAnalysisError(f"case drawing {how!r}: choose even or prevalence")
    picks = []
    for c in CLASS_CODES:
        rows = table[table["dx"] == c]
        if quota[c]:
            picks.append(rows.iloc[np.sort(rng.choice(len(rows), size=quota[c], replace=False))])
    drawn = pd.concat(picks).reset_index(drop=True)
    order = rng.permutation(len(drawn))
    drawn = drawn.iloc[order].reset_index(drop=True)
    return pd.DataFrame({"case": [f"c{i + 1:04d}" for i in range(len(drawn))],
                         "image_id": drawn["image_id"].astype(str).to_numpy(), "truth": drawn["dx"].to_numpy()})


def cases_from_data(n: int, split: str = "test", seed: int = 0, how: str = "even", data_cfg: Any = None,
                    run: str | Path | None = None, model_accuracy: float = 0.8) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A case table drawn from a data split (``lesionlab.data.open_source``; the shared HAM10000 when present, else
    the synthetic set), with model outputs from a run (``lesionlab.runs.load_run``) or a synthetic model.

    Returns the table and a description (data source, whether synthetic, model).
    """
    from lesionlab.config import DataConfig
    from lesionlab.data import open_source

    cfg = data_cfg or DataConfig()
    source = open_source(cfg)
    table = source.table
    pool = table[table["split"] == split] if split else table
    if pool.empty:
        raise StudyAnalysisError(f"split {split!r} of {source.name} has no images")
    if n > len(pool) and source.synthetic and data_cfg is None:
        # the synthetic set is small by default: make one large enough for the cases asked for
        source = open_source(DataConfig(source="synthetic", synthetic_n=max(700, int(n / 0.2) + 50)))
        table = source.table
        pool = table[table["split"] == split] if split else table
    cases = draw_cases(pool, n, seed=seed, how=how)
    info: dict[str, Any] = {"data": source.name, "synthetic_data": bool(source.synthetic), "split": split,
                            "drawn": how, "n": len(cases)}
    if run is not None:
        probs, run_id = run_outputs(run, source, cases["image_id"].tolist())
        info["model"] = f"run {run_id} ({run})"
    else:
        probs = synthetic_model_outputs(cases["truth"].tolist(), model_accuracy, seed=seed + 1)
        run_id = f"synthetic-model-{model_accuracy:g}"
        info["model"] = (f"SYNTHETIC model outputs (not a trained network), top-1 accuracy set to {model_accuracy:g}")
    for k, col in enumerate(MODEL_PROB_COLUMNS):
        cases[col] = probs[:, k]
    cases["model_run"] = run_id
    return cases, info


def run_outputs(run: str | Path, source: Any, image_ids: Sequence[str]) -> tuple[np.ndarray, str]:
    """The run's probabilities for the given images of a data source (its saved preprocessing; metadata when fused)."""
    from lesionlab.runs import load_run

    loaded = load_run(run)
    position = {iid: i for i, iid in enumerate(source.table["image_id"].astype(str))}
    missing = [i for i in image_ids if i not in position]
    if missing:
        raise StudyAnalysisError(f"images {missing[:5]} are not in {source.name}")
    rows = [position[i] for i in image_ids]
    images = [source.load_image(i) for i in rows]
    meta = None
    if loaded.meta_encoder is not None:
        t = source.table.iloc[rows]
        meta = [{"age": None if pd.isna(a) else float(a), "sex": s, "site": st}
                for a, s, st in zip(t["age"], t["sex"], t["site"], strict=True)]
    probs = loaded.predict_proba(images, meta)
    run_id = str(loaded.info.get("run_id") or loaded.info.get("name") or Path(run).name)
    return probs, run_id


# ------------------------------------------------------------------------------------------------ the export


@dataclass(frozen=True)
class SimulationSpec:
    """The study to simulate: design, arms, readers, time limit, form, faulty outputs."""

    study: str = "simulated-study"
    design: str = "crossover"
    arms: tuple[str, ...] = ("unassisted", "assisted")
    readers: int = 10
    time_limit_s: float | None = None
    confidence: bool = True
    faulty_fraction: float = 0.3
    target_alone: float | None = None
    target_assisted: float | None = None

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise StudyAnalysisError(f"design {self.design!r}: choose one of {', '.join(DESIGNS)}")
        bad = [a for a in self.arms if a not in ("unassisted", *MODEL_ARMS)]
        if bad or not self.arms or len(set(self.arms)) != len(self.arms):
            raise StudyAnalysisError(f"arms {list(self.arms)}: give distinct arms among unassisted, assisted, faulty")
        if self.design == "revise" and not any(a in MODEL_ARMS for a in self.arms):
            raise StudyAnalysisError("the revise design needs an arm with the model (assisted or faulty)")
        if self.readers < 1:
            raise StudyAnalysisError(f"readers must be >= 1, got {self.readers}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise StudyAnalysisError(f"time limit must be > 0 seconds, got {self.time_limit_s}")
        if not 0 <= self.faulty_fraction <= 1:
            raise StudyAnalysisError(f"faulty fraction must be in [0, 1], got {self.faulty_fraction}")


@dataclass
class Simulation:
    """A simulated export with the parameters that made it."""

    export: pd.DataFrame
    model: ReaderModel
    spec: SimulationSpec
    arm_cases: dict[str, list[str]]
    expected_accuracy: dict[str, float]
    notes: list[str] = field(default_factory=list)


def faulty_outputs(probs: np.ndarray, truth_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Deliberately wrong outputs: the top probability moves to a wrong class drawn from :data:`CONFUSION`."""
    out = probs.copy()
    conf = _confusion_matrix()
    for i, y in enumerate(truth_idx):
        w = int(rng.choice(len(CLASS_CODES), p=conf[y]))
        top = int(out[i].argmax())
        if top != w:
            out[i, [top, w]] = out[i, [w, top]]
    return out


def _assign_arms(cases: pd.DataFrame, spec: SimulationSpec, rng: np.random.Generator
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Case indices per arm, by the design's case sets (:func:`lesionlab.study.columns.arm_case_sets`), and notes.

    A platform study's own sets when the cases carry them (``case_set``, from ``cases_frame``); else disjoint,
    class-stratified sets dealt here (``separate``, ``revise``) or every case (``crossover``). In ``revise`` every case
    is first read alone, so ``unassisted`` indexes all cases; a listed ``unassisted`` arm is a control set whose cases
    get that first answer only.
    """
    n = len(cases)
    all_idx = np.arange(n)
    sets = arm_case_sets(spec.design, spec.arms)
    notes: list[str] = []
    out: dict[str, np.ndarray] | None = None
    if "case_set" in cases.columns:
        have = set(cases["case_set"])
        if have == set(sets.values()):
            out = {a: np.flatnonzero(cases["case_set"].to_numpy() == name) for a, name in sets.items()}
        else:
            notes.append(f"the case table's case sets ({', '.join(sorted(have))}) are not those of a {spec.design} "
                         f"study with arms {', '.join(spec.arms)} ({', '.join(sorted(set(sets.values())))}): cases "
                         "were dealt to the arms afresh")
    if out is None and spec.design == "crossover":
        out = {a: all_idx for a in spec.arms}
    if out is None:
        arms = list(spec.arms)
        groups: dict[str, list[int]] = {a: [] for a in arms}
        slot = 0
        for cls in CLASS_CODES:  # deal each class's cases round-robin so every arm gets a similar class mix
            members = rng.permutation(np.flatnonzero(cases["truth"].to_numpy() == cls))
            for m in members:
                groups[arms[slot % len(arms)]].append(int(m))
                slot += 1
        out = {a: np.sort(np.asarray(v, dtype=np.int64)) for a, v in groups.items()}
    if spec.design == "revise":
        out = {"unassisted": all_idx, **{a: v for a, v in out.items() if a != "unassisted"}}
    return out, notes


def simulate_study(cases: pd.DataFrame, spec: SimulationSpec, model: ReaderModel | None = None,
                   seed: int = 0) -> Simulation:
    """Simulated readers answering ``cases`` under ``spec``: the export table (every column of the contract)."""
    cases = check_cases(cases)
    model = model or ReaderModel()
    needs_model = any(a in MODEL_ARMS for a in spec.arms) or spec.design == "revise"
    if needs_model and not has_model_outputs(cases):
        raise StudyAnalysisError("arms with the model (assisted, faulty) need the model's probabilities in the case "
                                 "table (model_p_<code> columns)")
    rng = np.random.default_rng(seed)
    truth_idx = np.asarray([CLASS_CODES.index(t) for t in cases["truth"]])
    probs = cases[list(MODEL_PROB_COLUMNS)].to_numpy(np.float64) if has_model_outputs(cases) else None
    arm_idx, notes = _assign_arms(cases, spec, rng)
    fx = draw_effects(model, spec.readers, len(cases), rng)
    shown_by_arm: dict[str, np.ndarray] = {}
    faulty_by_arm: dict[str, np.ndarray] = {}
    for arm, idx in arm_idx.items():
        if arm == "unassisted" or probs is None:
            continue
        shown = probs[idx].copy()
        faulty = np.zeros(idx.size, dtype=bool)
        if arm == "faulty" and "faulty" in cases.columns:  # what the platform study froze for its faulty arm
            faulty = cases["faulty"].to_numpy(dtype=bool)[idx]
            shown[faulty] = cases[list(FAULTY_PROB_COLUMNS)].to_numpy(np.float64)[idx][faulty]
        elif arm == "faulty":
            k = round(spec.faulty_fraction * idx.size)
            faulty[rng.choice(idx.size, size=k, replace=False)] = True
            shown[faulty] = faulty_outputs(shown[faulty], truth_idx[idx][faulty], rng)
        shown_by_arm[arm], faulty_by_arm[arm] = shown, faulty
    assisted_arm = "assisted" if "assisted" in shown_by_arm else next(iter(shown_by_arm), None)
    if spec.target_alone is not None or spec.target_assisted is not None:
        alone_idx = arm_idx.get("unassisted")
        if spec.target_alone is not None and alone_idx is None:
            raise StudyAnalysisError("an accuracy-alone target needs an unassisted arm")
        if spec.target_assisted is not None and assisted_arm is None:
            raise StudyAnalysisError("an accuracy-with-the-model target needs an assisted arm")
        full_shown = None
        if assisted_arm is not None:
            full_shown = np.zeros((len(cases), len(CLASS_CODES)))
            full_shown[arm_idx[assisted_arm]] = shown_by_arm[assisted_arm]
        model = calibrate(model, fx, truth_idx, spec.time_limit_s, spec.target_alone, spec.target_assisted,
                          shown=full_shown, alone_cases=alone_idx,
                          assisted_cases=None if assisted_arm is None else arm_idx[assisted_arm],
                          second_look=spec.design == "revise")
    expected = {}
    for arm, idx in arm_idx.items():
        sh = shown_by_arm.get(arm)
        expected[arm] = expected_accuracy(model, fx, truth_idx[idx], spec.time_limit_s,
                                          None if sh is None else sh.argmax(axis=1),
                                          None if sh is None else sh.max(axis=1), cases=idx,
                                          second_look=spec.design == "revise" and sh is not None)
    rows = _export_rows(cases, spec, model, fx, rng, truth_idx, probs, arm_idx, shown_by_arm, faulty_by_arm)
    export = pd.DataFrame(rows, columns=list(EXPORT_COLUMNS))
    notes = ["SIMULATED readers (lesionlab study simulate), not people: every row has simulated = true", *notes]
    return Simulation(export, model, spec, {a: cases["case"].iloc[i].tolist() for a, i in arm_idx.items()},
                      expected, notes)


def _arm_order(spec: SimulationSpec, rng: np.random.Generator) -> list[str]:
    """One participant's order of arms: shuffled per participant in crossover, as listed otherwise (as the platform)."""
    order = list(spec.arms)
    if spec.design == "crossover":
        order = [order[i] for i in rng.permutation(len(order))]
    return order


def _revise_second(model: ReaderModel, fx: Effects, rng: np.random.Generator, first: dict[str, np.ndarray],
                   alone: np.ndarray, idx: np.ndarray, shown: np.ndarray, limit_s: float | None
                   ) -> dict[str, np.ndarray]:
    """Step 2 of the revise design: the same reader, the same case, now beside the model's output."""
    pos = np.searchsorted(alone, idx)
    own = first["own"][:, pos]
    adopt = rng.random(own.shape) < p_adopt(model, fx, shown.max(axis=1))
    answer = np.where(adopt, shown.argmax(axis=1)[None, :], own)
    secs = np.exp(log_time_mean(model, fx, "second", idx) + rng.normal(0, model.time_sd, own.shape))
    timed = secs > limit_s if limit_s is not None else np.zeros(own.shape, dtype=bool)
    mal_cols = [CLASS_CODES.index(m) for m in MALIGNANT_CODES]
    model_mal = np.clip(shown[:, mal_cols].sum(axis=1), 0, 1)
    conf1 = first["confidence"][:, pos]
    conf1 = np.where(np.isnan(conf1), 50.0, conf1)
    conf = np.where(adopt, np.round(0.5 * conf1 + 50 * model_mal[None, :]), conf1)
    return {"answer": np.where(timed, -1, answer), "seconds": np.where(timed, limit_s or 0, secs),
            "timed_out": timed, "confidence": np.where(timed, np.nan, conf)}


def _export_rows(cases: pd.DataFrame, spec: SimulationSpec, model: ReaderModel, fx: Effects,
                 rng: np.random.Generator, truth_idx: np.ndarray, probs: np.ndarray | None,
                 arm_idx: dict[str, np.ndarray], shown_by_arm: dict[str, np.ndarray],
                 faulty_by_arm: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    codes = np.asarray(CLASS_CODES, dtype=object)
    mal_cols = [CLASS_CODES.index(m) for m in MALIGNANT_CODES]
    # every arm's readings for all readers at once: independent draws per arm, the same case difficulty
    readings: dict[str, dict[str, np.ndarray]] = {}
    for arm, idx in arm_idx.items():
        if spec.design == "revise" and arm != "unassisted":
            continue
        readings[arm] = draw_answers(model, fx, truth_idx[idx], rng, shown_by_arm.get(arm), spec.time_limit_s, idx)
    case_arm: dict[int, str] = {}
    if spec.design == "revise":
        for arm, idx in arm_idx.items():
            if arm != "unassisted":
                readings[arm] = _revise_second(model, fx, rng, readings["unassisted"], arm_idx["unassisted"], idx,
                                               shown_by_arm[arm], spec.time_limit_s)
                case_arm.update(dict.fromkeys(idx.tolist(), arm))
    column = {arm: {int(k): i for i, k in enumerate(idx)} for arm, idx in arm_idx.items()}

    rows: list[dict[str, Any]] = []
    for j in range(spec.readers):
        participant = f"sim-{j + 1:02d}"
        order = _arm_order(spec, rng)
        clock = START + _dt.timedelta(days=j)
        if spec.design == "revise":
            plan = [(1, None, arm_idx["unassisted"])]
        else:
            plan = [(session_of(spec.design, order, a), a, arm_idx[a]) for a in order]
        position, last_session = 0, None
        for session, arm, idx in plan:
            if session != last_session:
                position, last_session = 0, session  # positions count within a session, across its arms
            for o in rng.permutation(idx.size):
                position += 1
                k = int(idx[o])
                row_arm = case_arm.get(k, "unassisted") if arm is None else arm
                # revise: alone (read as "unassisted"), then beside the model on the same screen
                steps = [("unassisted" if arm is None and step == 1 else row_arm, step)
                         for step in answer_steps(spec.design, row_arm)]
                for read_arm, step in steps:
                    rd, col = readings[read_arm], column[read_arm][k]
                    secs = float(rd["seconds"][j, col])
                    shown_at = clock
                    latency_ms = float(rng.uniform(20, 120))
                    answered_at = clock + _dt.timedelta(seconds=secs, milliseconds=latency_ms)
                    clock = answered_at + _dt.timedelta(seconds=float(rng.uniform(0.5, 2.0)))
                    ans = int(rd["answer"][j, col])
                    is_shown = model_on_screen(spec.design, row_arm, step)
                    faulty = bool(faulty_by_arm[read_arm][col]) if is_shown else False
                    out_probs = shown_by_arm[read_arm][col] if is_shown else (None if probs is None else probs[k])
                    confidence = rd["confidence"][j, col]
                    row: dict[str, Any] = {
                        "study": spec.study, "design": spec.design, "participant": participant, "simulated": True,
                        "case": cases["case"].iloc[k], "image_id": cases["image_id"].iloc[k], "arm": row_arm,
                        "session": session, "step": step, "position": position,
                        "answer": "" if ans < 0 else codes[ans],
                        "confidence": None if not spec.confidence or np.isnan(confidence) else float(confidence),
                        "management": "", "shown_at": shown_at.isoformat(timespec="milliseconds"),
                        "answered_at": answered_at.isoformat(timespec="milliseconds"),
                        "elapsed_ms": round(secs * 1000.0, 1),
                        "server_elapsed_ms": round(secs * 1000.0 + latency_ms, 1),
                        "timed_out": bool(rd["timed_out"][j, col]), "truth": cases["truth"].iloc[k],
                        "model_shown": is_shown, "model_top": codes[int(out_probs.argmax())] if is_shown else "",
                        "model_malignant": None if out_probs is None else float(out_probs[mal_cols].sum()),
                        "model_faulty": faulty,
                        "model_run": str(cases["model_run"].iloc[k]) if out_probs is not None else "",
                    }
                    for c, col_name in enumerate(MODEL_PROB_COLUMNS):
                        row[col_name] = None if out_probs is None else float(out_probs[c])
                    rows.append(row)
    return rows


def write_export(export: pd.DataFrame, out: str | Path, json_too: bool = True) -> dict[str, Path]:
    """Write the export as CSV (and JSON records beside it), atomically."""
    from lesionlab.core.io import atomic_write_json, atomic_write_text

    out = Path(out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ExportError(f"{out}: the export is written as .csv (with a .json beside it) or .json")
    paths = {}
    csv_path = out.with_suffix(".csv")
    if out.suffix.lower() == ".csv" or json_too:
        paths["csv"] = atomic_write_text(csv_path, export.to_csv(index=False))
    if out.suffix.lower() == ".json" or json_too:
        records = export.astype(object).where(export.notna(), None).to_dict(orient="records")
        paths["json"] = atomic_write_json(out.with_suffix(".json"), records)
    return paths
