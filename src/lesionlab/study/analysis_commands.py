"""Sub-commands of ``lesionlab study`` for the reader-study analysis: ``report``, ``mrmc``, ``simulate``, ``plan``.

Argument parsing and printing only; the work is done by the pure functions of :mod:`lesionlab.study.answers`,
:mod:`~lesionlab.study.report`, :mod:`~lesionlab.study.mrmc`, :mod:`~lesionlab.study.simulate`,
:mod:`~lesionlab.study.power` and :mod:`~lesionlab.study.simulated_contests`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionlab.core.errors import UsageError
from lesionlab.study.columns import ARMS, DESIGNS


def _arms(text: str) -> tuple[str, ...]:
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise argparse.ArgumentTypeError(f"arms {text!r}: a comma-separated list of {', '.join(ARMS)}")
    return arms


def _readers(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += list(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise argparse.ArgumentTypeError(f"readers {text!r}: for example 3-30 or 5,10,15")
    return out


def _fail(args: argparse.Namespace, err: Exception) -> int:
    if getattr(args, "debug", False):
        raise err
    print(f"lesionlab study {args.study_command}: error: {err}", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    """``lesionlab study report``."""
    from lesionlab.core.errors import LesionlabError
    from lesionlab.study.answers import is_export_file, load_answers
    from lesionlab.study.readers import FIGURE_NAMES
    from lesionlab.study.report import analyze, write_study_report

    try:
        answers = load_answers(args.source, study=args.study, drop_incomplete=args.drop_incomplete,
                               timeouts=args.timeouts)
        analysis = analyze(answers, n_boot=args.n_boot, seed=args.seed, alpha=args.alpha)
        if args.out is not None:
            out = args.out
        elif is_export_file(args.source):
            out = Path(args.source).with_name(Path(args.source).stem + "-report")
        else:
            out = Path("outputs") / "study-reports" / answers.study
        paths = write_study_report(analysis, out, title=args.title)
    except LesionlabError as err:
        return _fail(args, err)
    who = "SIMULATED readers" if answers.simulated else "readers"
    print(f"study {answers.study}: {answers.design} design, {len(answers.participants)} {who}, arms "
          f"{', '.join(answers.conditions)}")
    head = analysis.headline()
    for cond, h in head.items():
        model = h.get("model") or {}
        acc, sd = h.get("accuracy_mean"), h.get("accuracy_sd")
        print(f"  {cond:<10} {FIGURE_NAMES['accuracy'].lower()} {100 * acc:.1f}%"
              + (f" ± {100 * sd:.1f}" if sd is not None else "") + f" ({h['readers']} readers, {h['cases']} cases)"
              + (f"; model alone on the same cases {100 * model['accuracy']:.1f}%" if model.get("accuracy") is not None
                 else ""))
    for t in [*analysis.wilcoxon, *analysis.bootstrap_arms][:4]:
        print(f"  {t}")
    for name, res in analysis.mrmc.items():
        rr = res.analyses.get("rrrc")
        if rr is not None and rr.test is not None and rr.test.statistic is not None:
            print(f"  OR-Hillis {name}: F = {rr.test.statistic:.3f}, ddf {rr.test.ddf:.2f}, p = {rr.test.p_value:.4g}")
    for note in analysis.notes:
        print(f"  note: {note}")
    print(f"report: {paths['html']}\ntables: {paths['per_reader'].parent}")
    return 0


# --------------------------------------------------------------------------------------------------- mrmc


def cmd_mrmc(args: argparse.Namespace) -> int:
    """``lesionlab study mrmc``."""
    from lesionlab.core.errors import LesionlabError
    from lesionlab.core.io import atomic_write_json
    from lesionlab.study.answers import read_export
    from lesionlab.study.mrmc import mrmc

    try:
        frame = read_export(args.table)
        result = mrmc(frame, args.reader, args.modality, args.case, args.truth, args.fom, rating=args.rating,
                      answer=args.answer, threshold=args.threshold, positive=args.positive, alpha=args.alpha,
                      where=str(args.table))
    except LesionlabError as err:
        return _fail(args, err)
    print(result.text())
    if args.json is not None:
        atomic_write_json(args.json, result.to_dict())
        print(f"\nwritten: {args.json}")
    return 0


# ----------------------------------------------------------------------------------------------- simulate


def cmd_simulate(args: argparse.Namespace) -> int:
    """``lesionlab study simulate``."""
    from lesionlab.core.errors import LesionlabError
    from lesionlab.study.answers import check_answers
    from lesionlab.study.simulate import (
        ReaderModel,
        SimulationSpec,
        cases_from_data,
        read_cases,
        simulate_study,
        study_simulation,
        write_export,
    )

    try:
        if args.contest is not None:
            from lesionlab.study.simulated_contests import contest_summary, run_contest

            contest_cases = read_cases(args.cases) if args.cases is not None else None
            result = run_contest(args.contest, args.out, run=args.run, seed=args.seed, n_boot=args.n_boot,
                                 cases=contest_cases, study=args.study)
            print(contest_summary(result))
            print(f"export: {result.paths['csv']}")
            return 0
        design = args.design or "crossover"
        arms = args.arms or ("unassisted", "assisted")
        limit, confidence, faulty, name = args.time_limit, not args.no_confidence, args.faulty_fraction, args.study_name
        if args.cases is not None:
            cases, where = read_cases(args.cases), f"case table {args.cases}"
        elif args.study is not None:  # the study's own design, arms, time limit and form, as its participants
            fixed = [flag for flag, value in (("--design", args.design), ("--arms", args.arms),
                                              ("--time-limit", args.time_limit)) if value is not None]
            if fixed:
                raise UsageError(f"{', '.join(fixed)}: a study's simulated readers follow its definition (design, "
                                 "arms, time limit); change the definition, or simulate from --cases")
            cases, base, info = study_simulation(args.study, args.readers)
            design, arms, limit, faulty = base.design, base.arms, base.time_limit_s, base.faulty_fraction
            confidence = base.confidence and not args.no_confidence
            name = base.study if args.study_name == "simulated-study" else args.study_name
            where = (f"study {args.study}: {info['n']} frozen cases" + (" (SYNTHETIC images)" if info["synthetic_data"]
                                                                        else "") + f"; model: {info['model']}")
        else:
            cases, info = cases_from_data(args.n_cases, split=args.split, seed=args.seed, how=args.draw, run=args.run,
                                          model_accuracy=args.model_accuracy)
            where = (f"{info['n']} cases of the {info['split']} split of {info['data']}"
                     + (" (SYNTHETIC images)" if info["synthetic_data"] else "") + f"; model: {info['model']}")
        spec = SimulationSpec(study=name, design=design, arms=arms, readers=args.readers, time_limit_s=limit,
                              confidence=confidence, faulty_fraction=faulty, target_alone=args.target_alone,
                              target_assisted=args.target_assisted)
        model = ReaderModel(skill=args.skill, skill_sd=args.skill_sd, difficulty_sd=args.difficulty_sd,
                            reliance=args.reliance, reliance_sd=args.reliance_sd, time_median_s=args.time_median)
        sim = simulate_study(cases, spec, model, seed=args.seed)
        out = args.out if args.out.suffix else args.out / "export.csv"
        paths = write_export(sim.export, out, json_too=True)
    except (LesionlabError, ValueError) as err:
        return _fail(args, err)
    print(f"SIMULATED readers (not people): {spec.readers} readers, {spec.design} design, arms {', '.join(spec.arms)}")
    print(f"cases: {where}")
    realised = check_answers(sim.export, str(out)).frame.groupby("condition")["correct"].mean()
    for arm, acc in sim.expected_accuracy.items():
        print(f"  {arm:<10} expected accuracy {100 * acc:.1f}%, simulated {100 * realised[arm]:.1f}%")
    print(f"reader model: skill {sim.model.skill:.3f}, reliance {sim.model.reliance:.3f} (logit)")
    print("export: " + ", ".join(str(p) for p in paths.values()))
    return 0


# --------------------------------------------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    """``lesionlab study plan``."""
    from lesionlab.core.errors import LesionlabError
    from lesionlab.core.io import atomic_write_json, atomic_write_text
    from lesionlab.study.power import VarianceComponents, components_from_answers, plan, plan_figure

    try:
        observed = None
        if args.components is not None:
            if args.pilot is not None:
                raise UsageError("give a pilot export or --components, not both")
            if args.pilot_cases is None:
                raise UsageError("--components needs --pilot-cases K: the number of cases the covariances belong to")
            values = [float(v) for v in args.components.split(",")]
            if len(values) != 5:
                raise UsageError("--components takes five numbers: var_TR,Var,Cov1,Cov2,Cov3")
            comps = VarianceComponents(*values, n_cases=args.pilot_cases, fom=args.fom, source="given")
        elif args.pilot is not None:
            from lesionlab.study.answers import load_answers

            answers = load_answers(args.pilot, study=args.study, drop_incomplete=args.drop_incomplete)
            comps, observed = components_from_answers(answers, args.fom, args.arms)
        else:
            raise UsageError("give a pilot export (PILOT) or the variance components (--components, --pilot-cases)")
        if args.effect == "observed":
            if observed is None:
                raise UsageError("--effect observed needs a pilot export")
            effect = observed
        else:
            effect = float(args.effect)
        result = plan(comps, effect, target=args.power, alpha=args.alpha, readers=args.readers,
                      analysis=args.analysis)
        if args.effect == "observed":
            result.notes.append(f"effect = the pilot's observed difference {observed:+.4f}: optimistic, since a "
                                "pilot's difference is itself uncertain; prefer the smallest difference that matters")
    except (LesionlabError, ValueError) as err:
        return _fail(args, err)
    print(result.text())
    if args.out is not None:
        atomic_write_json(args.out / "plan.json", result.to_dict())
        rows = ["readers,cases,power,power_limit"] + [
            f"{r['readers']},{'' if r['cases'] is None else r['cases']},{'' if r['power'] is None else r['power']},"
            f"{r['power_limit']}" for r in result.rows]
        atomic_write_text(args.out / "plan.csv", "\n".join(rows) + "\n")
        plan_figure(result).savefig(args.out / "plan.png", dpi=100, bbox_inches="tight")
        print(f"written: {args.out / 'plan.json'}, plan.csv, plan.png")
    return 0


# ----------------------------------------------------------------------------------------------- register


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report``, ``mrmc``, ``simulate`` and ``plan`` to the ``study`` group."""
    p = sub.add_parser("report", help="analyse a study's answers: readers vs the model, alone and assisted",
                       description="Per-reader figures per arm, the model alone on the same cases, paired tests "
                                   "(Wilcoxon, McNemar, bootstrap), OR-Hillis MRMC where cases are paired, switching "
                                   "and automation bias; a self-contained HTML report with Markdown and CSV tables.")
    p.add_argument("source", help="an answer export (.csv or .json records) or a study created by the platform")
    p.add_argument("--out", type=Path, help="output folder (default: EXPORT-report beside the export, or "
                                            "outputs/study-reports/STUDY)")
    p.add_argument("--study", help="the study to analyse when the export holds several")
    p.add_argument("--drop-incomplete", action="store_true",
                   help="leave out participants without answers in every arm (default: an error naming them)")
    p.add_argument("--timeouts", choices=("wrong", "exclude"), default="wrong",
                   help="a time-out without an answer counts as wrong (default) or is left out of every figure")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the CIs (default: %(default)s)")
    p.add_argument("--title", help="report title")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("mrmc", help="OR-Hillis MRMC analysis of any fully crossed reader table",
                       description="Obuchowski-Rockette with Hillis's degrees of freedom: jackknife covariances, "
                                   "mean squares, random/fixed reader and case analyses, each modality's mean with "
                                   "its CI and every difference with SE and CI. One row per reader x modality x case.")
    p.add_argument("table", type=Path, help="a CSV (or JSON records) with one row per reader x modality x case")
    p.add_argument("--reader", required=True, help="reader column")
    p.add_argument("--modality", required=True, help="modality (arm, treatment) column")
    p.add_argument("--case", required=True, help="case column")
    p.add_argument("--truth", required=True, help="truth column (0/1 for auc/sensitivity/specificity, or see "
                                                  "--positive; any labels for accuracy with --answer)")
    value = p.add_mutually_exclusive_group(required=True)
    value.add_argument("--rating", help="confidence rating column (numbers)")
    value.add_argument("--answer", help="answer column (labels; correct when equal to the truth)")
    p.add_argument("--fom", choices=("auc", "accuracy", "sensitivity", "specificity"), required=True,
                   help="figure of merit; auc is the empirical (Wilcoxon) AUC of the ratings")
    p.add_argument("--threshold", type=float, help="a rating >= T counts as a positive call (binary figures)")
    p.add_argument("--positive", nargs="+", metavar="VALUE",
                   help="truth/answer values that count as diseased/positive (default: 1/true)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write the full result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_mrmc)

    p = sub.add_parser("simulate", help="write an answer export of SIMULATED readers (labelled simulated)",
                       description="Simulated readers from a confusion model (skill spread, case difficulty, "
                                   "reliance on the model's output, answer times and time-outs), written with the "
                                   "platform's export columns and simulated = true in every row. Cases from a case "
                                   "table, a study, or drawn from a data split with a run's or a synthetic model's "
                                   "outputs; --contest runs one of the HAM10000 study's contests end to end.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--cases", type=Path, help="case table CSV: case, image_id, truth, model_p_<code> x7, "
                                                "optional model_run")
    src.add_argument("--study", help="a study created by the platform (lesionlab study create): its frozen cases, "
                                     "case sets and model outputs, read under its design, arms and time limit")
    p.add_argument("--contest", choices=("ham10000-162", "ham10000-35x35"),
                   help="a HAM10000 contest with readers matched to the published GP figures: writes the export "
                        "and the report into --out (a folder); with --study, on that study (e.g. one created from "
                        "configs/studies/ham10000-gp-35x2.yaml)")
    p.add_argument("--out", type=Path, required=True, help="export file (.csv, with .json beside it) or folder")
    p.add_argument("--n-cases", type=int, default=100, help="cases drawn from the data (default: %(default)s)")
    p.add_argument("--split", default="test", help="split the cases are drawn from (default: %(default)s)")
    p.add_argument("--draw", choices=("even", "prevalence"), default="even",
                   help="cases per class: as even as the split allows, or by prevalence (default: %(default)s)")
    p.add_argument("--run", type=Path, help="a trained run whose outputs are shown (default: a synthetic model)")
    p.add_argument("--model-accuracy", type=float, default=0.8,
                   help="top-1 accuracy of the synthetic model (default: %(default)s)")
    p.add_argument("--design", choices=DESIGNS, help="study design (default: crossover; a --study's own)")
    p.add_argument("--arms", type=_arms, help="comma-separated arms (default: unassisted,assisted; a --study's own)")
    p.add_argument("--readers", type=int, default=10, help="simulated readers (default: %(default)s)")
    p.add_argument("--time-limit", type=float, help="seconds per image (default: none; a --study's own)")
    p.add_argument("--time-median", type=float, default=20.0, help="median answer time in s (default: %(default)s)")
    p.add_argument("--no-confidence", action="store_true", help="no malignancy confidence in the answers")
    p.add_argument("--faulty-fraction", type=float, default=0.3,
                   help="share of the faulty arm's cases with a deliberately wrong output (default: %(default)s)")
    p.add_argument("--target-alone", type=float, help="calibrate skill to this expected accuracy alone")
    p.add_argument("--target-assisted", type=float, help="calibrate reliance to this expected accuracy with the model")
    p.add_argument("--skill", type=float, default=0.0, help="mean skill (logit) when not calibrated")
    p.add_argument("--skill-sd", type=float, default=0.5, help="skill spread across readers (logit)")
    p.add_argument("--difficulty-sd", type=float, default=1.0, help="difficulty spread across cases (logit)")
    p.add_argument("--reliance", type=float, default=-0.5, help="mean reliance on the model (logit)")
    p.add_argument("--reliance-sd", type=float, default=0.8, help="reliance spread across readers (logit)")
    p.add_argument("--study-name", default="simulated-study", help="the export's study column")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of --contest's report")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("plan", help="readers and cases for a chosen power (OR-Hillis power method)",
                       description="The number of readers and cases to detect a difference in a figure of merit "
                                   "with the chosen power, from variance components estimated on a pilot export "
                                   "(two arms on the same cases) or given, by the method of Hillis, Obuchowski & "
                                   "Berbaum.")
    p.add_argument("pilot", nargs="?", help="pilot answer export (crossover or revise design)")
    p.add_argument("--effect", required=True, help="difference in the figure of merit to detect, or 'observed'")
    p.add_argument("--fom", default="accuracy",
                   choices=("accuracy", "malignant_sensitivity", "malignant_specificity", "mel_sensitivity",
                            "malignant_auc"), help="figure of merit (default: %(default)s)")
    p.add_argument("--arms", type=_arms, default=("unassisted", "assisted"), help="the two arms compared")
    p.add_argument("--components", help="var_TR,Var,Cov1,Cov2,Cov3 instead of a pilot")
    p.add_argument("--pilot-cases", type=int, help="cases the given covariances belong to")
    p.add_argument("--power", type=float, default=0.8, help="target power (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05, help="two-sided significance level (default: %(default)s)")
    p.add_argument("--readers", type=_readers, default=list(range(3, 31)), help="reader counts (default: 3-30)")
    p.add_argument("--analysis", choices=("rrrc", "frrc"), default="rrrc",
                   help="random readers and cases (default) or fixed readers")
    p.add_argument("--study", help="the study to use when the pilot export holds several")
    p.add_argument("--drop-incomplete", action="store_true", help="leave out pilot participants missing an arm")
    p.add_argument("--out", type=Path, help="folder for plan.json, plan.csv and plan.png")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_plan)
