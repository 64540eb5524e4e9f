"""Sub-commands of ``lesionlab study`` for the reader-study platform: create, invite, serve, progress, export, close,
migrate."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any


def _print(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_create(args: argparse.Namespace) -> int:
    from lesionlab.study.create import create_study
    from lesionlab.study.definition import load_definition

    definition = load_definition(args.definition, args.overrides)
    out = Path(args.out) if args.out else Path("studies") / definition.name
    created = create_study(definition, out, database=args.db, progress=_print)
    print(f"study {created.study_id!r} created in {created.path}")
    print(f"  data: {'SYNTHETIC images (not dermoscopy)' if created.synthetic else 'real images'}; cases "
          + ", ".join(f"{k}: {v}" for k, v in created.cases.items()))
    print(f"  model: {created.model_run or 'none'}; database: {created.database}")
    print(f"  admin token: {created.path / 'admin-token.txt'} (keep it private; the progress page asks for it)")
    print(f"next: lesionlab study invite {created.path} --n 20 --base-url http://HOST:8000")
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    from lesionlab.study.folder import open_study
    from lesionlab.study.participation import invite

    folder = open_study(args.study, args.db)
    try:
        expires = None
        if args.expires_days is not None:
            expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=args.expires_days)
        with folder.sessions.begin() as db:
            invites = invite(db, folder.study_id, folder.definition, args.n, args.label, expires)
    finally:
        folder.close()
    rows = [{"participant": i.participant, "label": i.label, "link": i.link(args.base_url)} for i in invites]
    if args.out:
        from lesionlab.core.io import atomic_write_text

        lines = ["participant,label,link"] + [f"{r['participant']},{r['label']},{r['link']}" for r in rows]
        atomic_write_text(args.out, "\n".join(lines) + "\n")
        Path(args.out).chmod(0o600)
        _print(f"{len(rows)} invite links written to {args.out} (they are the participants' keys: send each one to "
               "one person only)")
    for r in rows:
        print(f"{r['label']}\t{r['participant']}\t{r['link']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lesionlab.study.app import create_study_app
    from lesionlab.study.folder import open_study

    folder = open_study(args.study, args.db)
    app = create_study_app(folder)
    _print(f"serving study {folder.study_id!r} ({folder.definition.design}, arms {', '.join(folder.definition.arms)})"
           f" at http://{args.host}:{args.port}/ ; progress: http://{args.host}:{args.port}/admin")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=5)
    folder.close()
    return 0


def _progress_table(progress: dict[str, Any]) -> str:
    arms = progress["arms"]
    head = ["participant", "label", "done"] + [f"{a} answered/time-outs" for a in arms] + ["finished"]
    lines = ["\t".join(head)]
    for r in progress["participants"]:
        cells = [r["participant"], r["label"], f"{r['done']}/{r['total']}"]
        cells += [f"{r['arms'][a]['answered']}/{r['arms'][a]['timed_out']}" for a in arms]
        cells.append("yes" if r["finished"] else "no")
        lines.append("\t".join(cells))
    tot = progress["totals"]
    lines.append("\t".join(["total", "", ""] + [f"{tot[a]['answered']}/{tot[a]['timed_out']} of {tot[a]['required']}"
                                                 for a in arms] + [str(progress["finished"])]))
    return "\n".join(lines)


def cmd_progress(args: argparse.Namespace) -> int:
    from lesionlab.study.folder import open_study
    from lesionlab.study.participation import progress
    from lesionlab.study.storage import Study

    folder = open_study(args.study, args.db)
    try:
        with folder.sessions() as db:
            study = db.get(Study, folder.study_id)
            assert study is not None
            report = progress(db, study, folder.definition)
    finally:
        folder.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    state = f"closed {report['closed_at']}" if report["closed"] else "open"
    print(f"study {report['study']!r} ({report['design']}), {state}: {len(report['participants'])} participants, "
          f"{report['started']} started, {report['finished']} finished")
    print(_progress_table(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lesionlab.study.export import write_export
    from lesionlab.study.folder import open_study

    folder = open_study(args.study, args.db)
    try:
        out = Path(args.out) if args.out else folder.path / "export"
        written = write_export(folder, out)
    finally:
        folder.close()
    import pandas as pd

    n = len(pd.read_csv(written["answers_csv"]))
    print(f"{n} answers -> {written['answers_csv']} and {written['answers_json']}")
    print(f"cases -> {written['cases_csv']} and {written['cases_json']}")
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    from lesionlab.study.folder import open_study
    from lesionlab.study.participation import close_study

    folder = open_study(args.study, args.db)
    try:
        with folder.sessions.begin() as db:
            result = close_study(db, folder.study_id)
    finally:
        folder.close()
    print(f"study {result['study']!r} closed at {result['closed_at']}: no more answers are accepted")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from lesionlab.study.folder import open_study
    from lesionlab.study.storage import SCHEMA_HEAD, current_revision, upgrade

    folder = open_study(args.study, args.db, check=False)
    try:
        before = current_revision(folder.engine)
        upgrade(folder.engine)
        print(f"{folder.safe_url}: schema {before or 'none'} -> {current_revision(folder.engine)} "
              f"(this lesionlab: {SCHEMA_HEAD})")
    finally:
        folder.close()
    return 0


def load_bench(participants: int = 50, per_class: int = 2, run: str | None = None, db: str | None = None,
               max_seconds: float = 120.0, workdir: str | Path | None = None, think_s: float = 1.0
               ) -> dict[str, Any]:
    """A throwaway study on the SYNTHETIC set (both arms when ``run`` is given), served by its own process,
    answered by ``participants`` simulated readers at once; returns the load report and the stored-answer count."""
    import tempfile

    from sqlalchemy import func, select

    from lesionlab.study.create import create_study
    from lesionlab.study.definition import definition_from_dict
    from lesionlab.study.folder import open_study
    from lesionlab.study.loadtest import running_server, simulate_participants
    from lesionlab.study.participation import invite
    from lesionlab.study.storage import Answer

    data: dict[str, Any] = {
        "name": "load-bench", "design": "separate", "arms": ["unassisted", "assisted"] if run else ["unassisted"],
        "cases": {"data": {"source": "synthetic", "synthetic_n": 700, "split": "lesion"},
                  "splits": ["train", "val", "test"], "per_class": per_class},
        "time_limit_s": 45,
    }
    if run:
        data["model"] = {"run": str(run), "support": ["probabilities", "top1", "malignant"]}
    with tempfile.TemporaryDirectory(prefix="lesionlab-study-bench-", dir=workdir) as tmp:
        created = create_study(definition_from_dict(data), Path(tmp) / "study", database=db)
        folder = open_study(created.path)
        with folder.sessions.begin() as session:
            tokens = [i.token for i in invite(session, folder.study_id, folder.definition, participants)]
        with running_server(created.path, db=db) as base:
            report = simulate_participants(base, tokens, max_seconds=max_seconds, think_s=think_s)
        with folder.sessions() as session:
            stored = int(session.scalar(select(func.count()).select_from(Answer)))
        expected = participants * sum(created.cases.values())
        folder.close()
    return {"report": report.as_dict(), "stored_answers": stored, "expected_answers": expected, "think_s": think_s,
            "database": "postgresql" if db else "sqlite"}


def cmd_bench(args: argparse.Namespace) -> int:
    result = load_bench(args.participants, args.per_class, args.run, args.db, args.max_seconds, think_s=args.think_s)
    r = result["report"]
    print(json.dumps(result, indent=2))
    print(f"{r['participants']} participants, {result['stored_answers']}/{result['expected_answers']} answers stored "
          f"in {r['seconds']:.1f} s ({r['throughput']:.0f}/s); answer latency p50 {r['answer_p50']:.1f} ms, "
          f"p95 {r['answer_p95']:.1f} ms, p99 {r['answer_p99']:.1f} ms; 4xx {r['errors_4xx']}, 5xx {r['errors_5xx']}")
    if args.json:
        from lesionlab.core.io import atomic_write_json

        atomic_write_json(args.json, result)
    return 0 if r["errors_5xx"] == 0 and result["stored_answers"] == result["expected_answers"] else 1


def _errors(fn: Any) -> Any:
    """Turn a refused platform operation into the CLI's one-line error."""

    def run(args: argparse.Namespace) -> int:
        from lesionlab.study.errors import StudyError, StudyRequestError

        try:
            return fn(args)
        except StudyRequestError as err:
            raise StudyError(err.message) from None

    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add this part's sub-commands to the ``study`` group."""
    db_help = "database URL instead of the study's own (e.g. postgresql://user@host:5432/db)"

    p = sub.add_parser("create", help="freeze a study definition: cases, images, model outputs, database")
    p.add_argument("definition", help="study YAML, e.g. configs/studies/ham10000-gp-35x2.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.run=runs/other")
    p.add_argument("--out", help="study folder (default studies/<name>)")
    p.add_argument("--db", help="PostgreSQL URL (default: SQLite file study.db in the study folder)")
    p.set_defaults(func=_errors(cmd_create))

    p = sub.add_parser("invite", help="add participants; prints one invite link each")
    p.add_argument("study", help="study folder")
    p.add_argument("--n", type=int, default=1, help="how many participants (default 1)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="where participants reach the server")
    p.add_argument("--label", default="", help="label prefix, e.g. gp- (default 'reader N')")
    p.add_argument("--expires-days", type=float, help="links stop working after this many days")
    p.add_argument("--out", help="also write the links to this CSV (mode 0600)")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=_errors(cmd_invite))

    p = sub.add_parser("serve", help="the study's web app: participant page /join, progress page /admin")
    p.add_argument("study", help="study folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=_errors(cmd_serve))

    p = sub.add_parser("progress", help="participants, answered / time-outs per arm")
    p.add_argument("study", help="study folder")
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=_errors(cmd_progress))

    p = sub.add_parser("export", help="answers as tidy CSV + JSON (one row per answer), and the case table")
    p.add_argument("study", help="study folder")
    p.add_argument("--out", help="folder (default STUDY/export)")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=_errors(cmd_export))

    p = sub.add_parser("close", help="close a study: no more answers or invites")
    p.add_argument("study", help="study folder")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=_errors(cmd_close))

    p = sub.add_parser("bench", help="load test: simulated participants answering a throwaway synthetic study")
    p.add_argument("--participants", type=int, default=50)
    p.add_argument("--per-class", type=int, default=2, help="cases per class per arm (default 2: 14 per arm)")
    p.add_argument("--run", help="a run directory: adds an assisted arm")
    p.add_argument("--db", help="PostgreSQL URL (default SQLite in a temporary folder)")
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--think-s", type=float, default=1.0,
                   help="mean seconds a simulated reader looks at a case (0: as fast as the server allows)")
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=_errors(cmd_bench))

    p = sub.add_parser("migrate", help="bring the study database's schema up to date (Alembic)")
    p.add_argument("study", help="study folder")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=_errors(cmd_migrate))
