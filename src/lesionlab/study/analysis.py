"""The reader-study analysis' Python API in one place (the commands ``lesionlab study report|mrmc|simulate|plan``
call exactly these)::

    from lesionlab.study import analysis as sa

    answers = sa.load_answers("export.csv")          # or a DataFrame, or a study created by the platform
    result = sa.analyze(answers)                      # per-reader figures, tests, OR-Hillis, switching, ...
    sa.write_study_report(result, "report/")          # report.html, report.md, CSV tables, analysis.json

    sa.mrmc(frame, "reader", "modality", "case", "truth", "auc", rating="rating")   # any fully crossed table
    sim = sa.simulate_study(cases, sa.SimulationSpec(design="crossover", readers=20))  # simulated readers
    comps, observed = sa.components_from_answers(answers, "accuracy")
    sa.plan(comps, effect=0.05).text()                # readers and cases for 80% power
    sa.run_contest("ham10000-35x35", "out/")          # a HAM10000 contest with SIMULATED readers
"""

from __future__ import annotations

from lesionlab.study.analysis_errors import ExportError, NotCrossedError, StudyAnalysisError, UndefinedFOMError
from lesionlab.study.answers import Answers, check_answers, load_answers, read_export
from lesionlab.study.mrmc import ORResult, estimate_fom, mrmc, or_hillis, reader_table
from lesionlab.study.power import (
    Plan,
    VarianceComponents,
    cases_for_power,
    components_from_answers,
    plan,
    power,
    simulate_power,
)
from lesionlab.study.readers import answer_figures, per_reader
from lesionlab.study.report import StudyAnalysis, analyze, write_study_report
from lesionlab.study.simulate import (
    ReaderModel,
    SimulationSpec,
    cases_from_data,
    read_cases,
    simulate_study,
    synthetic_model_outputs,
    write_export,
)
from lesionlab.study.simulated_contests import CONTESTS, run_contest
from lesionlab.study.switching import automation_bias, switching

__all__ = [
    "CONTESTS",
    "Answers",
    "ExportError",
    "NotCrossedError",
    "ORResult",
    "Plan",
    "ReaderModel",
    "SimulationSpec",
    "StudyAnalysis",
    "StudyAnalysisError",
    "UndefinedFOMError",
    "VarianceComponents",
    "analyze",
    "answer_figures",
    "automation_bias",
    "cases_for_power",
    "cases_from_data",
    "check_answers",
    "components_from_answers",
    "estimate_fom",
    "load_answers",
    "mrmc",
    "or_hillis",
    "per_reader",
    "plan",
    "power",
    "read_cases",
    "read_export",
    "reader_table",
    "run_contest",
    "simulate_power",
    "simulate_study",
    "switching",
    "synthetic_model_outputs",
    "write_export",
    "write_study_report",
]
