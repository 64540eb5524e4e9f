"""The HAM10000 study's two reader contests as ready-made analyses, with SIMULATED readers.

The study had general practitioners (GPs) classify images: 22 GPs, 162 images, no time limit, age/sex/site shown,
27.7% accuracy (against 78.4% for the weakest network); then 19 GPs, 35 images alone with 45 s each (17.3%) and 35
other images with the network's output beside the image (42.4%). Their answers are not public. Here the same
contests run end to end with **simulated readers** (:mod:`lesionlab.study.simulate`) whose skill and reliance on the
model are calibrated so that their expected accuracy equals those published GP figures: a check that the whole
pipeline (contest definition -> cases drawn from a test split -> model outputs -> answers -> export file -> report)
works and reports the published layout. They are not the study's physicians, and every report and export says so.

Cases come from the test split of the data (the shared HAM10000 when present, else the SYNTHETIC set), drawn per
class as evenly as the split allows; the model's outputs from a trained run when given, else from a SYNTHETIC model
whose top-1 accuracy is set to 78.4% (the weakest network's published figure).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from lesionlab.study.analysis_errors import StudyAnalysisError
from lesionlab.study.simulate import (
    ReaderModel,
    SimulationSpec,
    cases_from_data,
    check_cases,
    simulate_study,
    study_simulation,
    write_export,
)


@dataclass(frozen=True)
class Contest:
    """One published contest: its design and the GP figures the simulated readers are matched to."""

    key: str
    title: str
    readers: int
    cases_per_arm: int
    arms: tuple[str, ...]
    time_limit_s: float | None
    targets: dict[str, float]
    published: str
    clinical_data_shown: bool
    model_accuracy: float = 0.784
    time_median_s: float = 20.0
    definition: str = ""  # the platform's study definition of this contest, relative to the repository root

    def spec(self) -> SimulationSpec:
        """The simulation of this contest (design ``separate``: each arm its own cases)."""
        return SimulationSpec(study=self.key, design="separate", arms=self.arms, readers=self.readers,
                              time_limit_s=self.time_limit_s, confidence=False,
                              target_alone=self.targets.get("unassisted"), target_assisted=self.targets.get("assisted"))


CONTESTS: dict[str, Contest] = {
    "ham10000-162": Contest(
        key="ham10000-162", title="HAM10000 contest 1: 162 images, no time limit, age/sex/site shown",
        readers=22, cases_per_arm=162, arms=("unassisted",), time_limit_s=None, targets={"unassisted": 0.277},
        published="22 general practitioners, 162 images, no time limit: 27.7% accuracy (weakest network 78.4%)",
        clinical_data_shown=True, time_median_s=30.0, definition="configs/studies/ham10000-gp-162.yaml"),
    "ham10000-35x35": Contest(
        key="ham10000-35x35", title="HAM10000 contest 2: 35 images alone, 35 with the network, 45 s each",
        readers=19, cases_per_arm=35, arms=("unassisted", "assisted"), time_limit_s=45.0,
        targets={"unassisted": 0.173, "assisted": 0.424},
        published="19 general practitioners, 45 s per image: 17.3% accuracy alone (35 images), 42.4% with the "
                  "network's output (35 other images); melanoma sensitivity 0.08 -> 0.35",
        clinical_data_shown=False, definition="configs/studies/ham10000-gp-35x2.yaml"),
}


@dataclass
class ContestResult:
    """What a contest run wrote and how the simulated readers compare with the published figures."""

    contest: Contest
    out_dir: Path
    paths: dict[str, Path]
    published: dict[str, float]
    simulated: dict[str, float]  # realised mean reader accuracy per arm
    expected: dict[str, float]  # what the calibration aimed at (expected accuracy of the drawn readers)
    model_accuracy: dict[str, float | None]
    info: dict[str, Any] = field(default_factory=dict)


def run_contest(key: str, out_dir: str | Path, run: str | Path | None = None, data_cfg: Any = None, seed: int = 0,
                n_boot: int = 1000, reader_model: ReaderModel | None = None,
                cases_per_arm: int | None = None, cases: pd.DataFrame | None = None,
                study: str | Path | None = None) -> ContestResult:
    """Contest definition -> case table -> simulated readers -> export file -> report, in ``out_dir``.

    ``study``: a study created by the platform from a definition (``lesionlab study create``, e.g.
    ``configs/studies/ham10000-gp-35x2.yaml``): the readers read its frozen cases, case sets and model outputs
    under its design, arms and time limit, as its participants would. Otherwise: ``run``, a trained run whose
    outputs are shown (else a SYNTHETIC model); ``data_cfg``, a :class:`lesionlab.config.DataConfig` (default: the
    shared HAM10000 when present, else the synthetic set); ``cases_per_arm``: fewer cases than the published contest
    (for a small test split; said in the report); ``cases``: a ready case table instead (``case, image_id, truth,
    model_p_<code>``), split evenly between the contest's arms.
    """
    from lesionlab.core.io import atomic_write_json, atomic_write_text
    from lesionlab.study.answers import load_answers
    from lesionlab.study.report import analyze, write_study_report

    if key not in CONTESTS:
        raise StudyAnalysisError(f"unknown contest {key!r}; choose one of {', '.join(CONTESTS)}")
    contest = CONTESTS[key]
    if cases_per_arm is not None and cases_per_arm != contest.cases_per_arm:
        if cases_per_arm < 2:
            raise StudyAnalysisError(f"contest {key}: {cases_per_arm} cases per arm is too few (the test split is "
                                     "too small)")
        contest = replace(contest, cases_per_arm=cases_per_arm,
                          title=f"{contest.title} [{cases_per_arm} cases per arm here, not "
                                f"{contest.cases_per_arm}]")
    out = Path(out_dir)
    spec = contest.spec()
    study_notes: list[str] = []
    if study is not None:
        if cases is not None or run is not None or data_cfg is not None:
            raise StudyAnalysisError("a contest reads a study's frozen cases and model outputs: give the study alone "
                                     "(not cases, run or data as well)")
        cases, base, info = study_simulation(study, contest.readers)
        missing = [a for a in contest.targets if a not in base.arms]
        if missing:
            raise StudyAnalysisError(f"contest {key}: the study {study} has no {', '.join(missing)} arm (its arms: "
                                     f"{', '.join(base.arms)}); the published figures are for the arms "
                                     f"{', '.join(contest.targets)}")
        spec = replace(base, target_alone=contest.targets.get("unassisted"),
                       target_assisted=contest.targets.get("assisted"))
        sizes = cases["case_set"].value_counts().to_dict()
        per_arm = min(sizes.values())
        if per_arm != contest.cases_per_arm or len(set(sizes.values())) > 1:
            contest = replace(contest, cases_per_arm=per_arm,
                              title=f"{contest.title} [study {base.study}: "
                                    f"{', '.join(f'{n} cases ({s})' for s, n in sizes.items())}]")
        if base.time_limit_s != contest.time_limit_s:
            study_notes.append(f"the study's time limit ({base.time_limit_s or 'none'} s) differs from the published "
                               f"contest's ({contest.time_limit_s or 'none'} s)")
        if base.design != "separate" or tuple(base.arms) != contest.arms:
            study_notes.append(f"the study's design ({base.design}, arms {', '.join(base.arms)}) differs from the "
                               f"published contest's (separate, arms {', '.join(contest.arms)})")
    elif cases is not None:
        cases = check_cases(cases, "contest cases")
        if len(cases) < 2 * len(contest.arms):
            raise StudyAnalysisError(f"contest {key}: {len(cases)} cases are too few for {len(contest.arms)} arm(s)")
        per_arm = len(cases) // len(contest.arms)
        if per_arm != contest.cases_per_arm:
            contest = replace(contest, cases_per_arm=per_arm,
                              title=f"{contest.title} [{per_arm} cases per arm here]")
        runs = sorted({r for r in cases["model_run"] if r})
        info: dict[str, Any] = {"data": "a given case table", "synthetic_data": False, "split": "given",
                                "drawn": "given", "n": len(cases), "model": ", ".join(runs) or "as in the case table"}
    else:
        cases, info = cases_from_data(contest.cases_per_arm * len(contest.arms), split="test", seed=seed, how="even",
                                      data_cfg=data_cfg, run=run, model_accuracy=contest.model_accuracy)
    paths = {"cases": atomic_write_text(out / "cases.csv", cases.to_csv(index=False))}
    model = reader_model or ReaderModel(time_median_s=contest.time_median_s)
    sim = simulate_study(cases, spec, model=model, seed=seed)
    paths.update(write_export(sim.export, out / "export.csv"))
    answers = load_answers(paths["csv"])  # read back from the file, exactly as a platform export is read
    analysis = analyze(answers, n_boot=n_boot, seed=seed)
    analysis.notes.insert(0, "SIMULATED readers matched to the published general-practitioner figures "
                             f"({contest.published}); not the study's physicians")
    analysis.notes.append(f"cases: {info['n']} from the {info['split']} split of {info['data']}"
                          + (" (SYNTHETIC images)" if info["synthetic_data"] else "") + f"; model: {info['model']}")
    analysis.notes += study_notes
    report = write_study_report(analysis, out / "report", title=f"{contest.title} (SIMULATED readers)")
    paths.update({f"report_{k}": v for k, v in report.items()})
    headline = analysis.headline()
    simulated = {arm: headline[arm]["accuracy_mean"] for arm in contest.targets}
    model_acc = {arm: (headline[arm].get("model") or {}).get("accuracy") for arm in contest.targets}
    result = ContestResult(contest, out, paths, dict(contest.targets), simulated, dict(sim.expected_accuracy),
                           model_acc, info)
    paths["contest"] = atomic_write_json(out / "contest.json", {
        "contest": asdict(contest), "published_gp_accuracy": contest.targets, "simulated_reader_accuracy": simulated,
        "expected_accuracy_of_drawn_readers": sim.expected_accuracy, "model_accuracy": model_acc,
        "reader_model": asdict(sim.model), "seed": seed, "cases": info,
        "statement": "SIMULATED readers matched to published figures; not the study's physicians"})
    return result


def contest_summary(result: ContestResult) -> str:
    """A few lines for the terminal: published against simulated figures."""
    lines = [f"{result.contest.title}: SIMULATED readers ({result.contest.readers}), not the study's physicians"]
    for arm, target in result.published.items():
        got = result.simulated.get(arm)
        model = result.model_accuracy.get(arm)
        lines.append(f"  {arm:<10} published GP accuracy {100 * target:.1f}%   simulated readers "
                     f"{'n/a' if got is None else f'{100 * got:.1f}%'}   model on the same cases "
                     f"{'n/a' if model is None else f'{100 * model:.1f}%'}")
    lines.append(f"  data: {result.info.get('data')}{' (SYNTHETIC)' if result.info.get('synthetic_data') else ''}; "
                 f"model: {result.info.get('model')}")
    lines.append(f"  report: {result.paths['report_html']}")
    return "\n".join(lines)

