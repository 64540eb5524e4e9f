"""Reports: one self-contained HTML file (figures inlined as base64 PNG) plus Markdown with the same tables.

A run report is rendered from an evaluation directory (``metrics.json`` + ``predictions.csv``, as written by
``lesionlab evaluate``); a grid report (:mod:`lesionlab.evaluate.grid_report`) from a table of runs and the tests
between conditions. Both are pure functions from data to a :class:`Document` (:func:`run_report`); the
``render_*`` functions only add file IO. The figures are in :mod:`lesionlab.evaluate.figures`.
Every section carries a stable ``id`` and ``data-testid`` so browser tests (and people) can find it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from lesionlab.classes import CLASS_CODES, CLASSES
from lesionlab.core.card import INTENDED_USE, KNOWN_LIMITS, UNKNOWN_LICENCE
from lesionlab.core.errors import LesionlabError, MissingFileError
from lesionlab.core.io import atomic_write_text, read_json
from lesionlab.core.metrics import HEADLINE
from lesionlab.evaluate.document import Document, Plot, Table, fmt, fmt_ci
from lesionlab.evaluate.figures import (
    confusion_figure,
    curves_figure,
    png_data_uri,
    reliability_figure,
    sens_spec_figure,
)
from lesionlab.evaluate.predictions import arrays, read_predictions
from lesionlab.evaluate.robustness_report import headline_text, report_plots
from lesionlab.evaluate.robustness_report import report_tables as robustness_tables
from lesionlab.evaluate.subgroups import report_tables as subgroup_tables
from lesionlab.evaluate.subgroups import summary_text
from lesionlab.runs import seal_enclosing_run

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
GRID_RESULTS_FILE = "results.csv"

METRIC_NAMES = {
    "accuracy": "Accuracy", "error_rate": "Error rate", "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1", "macro_auc": "Macro AUC (one-vs-rest)", "macro_ap": "Macro average precision",
    "macro_gmean": "Macro G-mean", "ece": "Expected calibration error", "nll": "Negative log-likelihood",
    "brier": "Brier score",
}


class ReportError(LesionlabError, ValueError):
    """Inputs a report cannot be made from; the message names the file or field."""


# ------------------------------------------------------------------------------------------ run document


def headline_table(doc: dict[str, Any]) -> Table:
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


def per_class_table(doc: dict[str, Any], classes: Sequence[str]) -> Table:
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


def _scope_tables(doc: dict[str, Any]) -> list[Table]:
    """The out-of-scope gate against each out-of-scope set, and the abstention and quality checks."""
    scope = doc.get("scope") or {}
    gate, tables = scope.get("gate"), []
    if gate:
        rows = [[r["set"], r["method"] + (" (the gate)" if r["gate"] else ""), fmt(r["auroc"]), fmt(r["detected"]),
                 fmt(r["false_rejection"])] for r in scope.get("ood") or []]
        tables.append(Table("Out-of-scope gate", "table-scope", ["out-of-scope set", "score", "AUROC",
                                                                  "detected", "false rejection (this split)"], rows,
                            note=f"{gate['method']} score, threshold {fmt(gate['threshold'])} fitted on validation "
                                 f"to reject at most {fmt(gate.get('max_false_rejection'))} of it; sets: "
                                 + ", ".join(f"{k} ({v})" for k, v in (scope.get("ood_sets") or {}).items())))
    rows = []
    if scope.get("uncertainty"):
        u = scope["uncertainty"]
        rows += [["uncertain (margin below threshold)",
                  f"{fmt(u['uncertain_rate'])} (threshold {fmt(u['threshold'])})"],
                 ["accuracy when uncertain / certain",
                  f"{fmt(u['accuracy_uncertain'])} / {fmt(u['accuracy_certain'])}"]]
    if scope.get("quality"):
        q = scope["quality"]
        rows.append(["image-quality flags", f"{q['flagged']} of {q['n']} (dark {q['too_dark']}, bright "
                     f"{q['too_bright']}, blurred {q['blurred']}, one colour {q['one_colour']})"])
    if scope.get("degradation"):
        d = scope["degradation"]
        rows.append(["flagged degraded (false rejections on this split)",
                     f"{d['flagged']} of {scope.get('n')} (threshold {fmt(d['threshold'])}, fitted to flag at most "
                     f"{fmt(d.get('max_false_rejection'))} of the clean validation images; on validation it caught "
                     f"{fmt(d.get('val_detection'))} of corrupted copies)"])
    if rows:
        tables.append(Table("Abstention and image quality", "table-abstention", ["check", "value"], rows))
    return tables


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
        rows += [[f"{c} referred (this split)", f"{v['referred']} of {v['n']} ({fmt(v['rate'])})"]
                 for c, v in (ref.get("by_class") or {}).items()]
    return Table("Malignancy triage", "table-referral", ["quantity", "value"], rows,
                 "Malignant classes: akiec, bcc, mel. The referral threshold is fitted on the validation split only.")


def decision_rules_table(doc: dict[str, Any], classes: Sequence[str]) -> Table | None:
    """Both decision rules side by side: accuracy's arg-max and balanced accuracy's prior-corrected arg-max."""
    rules = doc.get("decision_rules")
    if not rules:
        return None
    rows = []
    for name, block in rules.items():
        if block.get("undefined"):
            rows.append([name, "n/a", "n/a", "", *("" for _ in classes), f"n/a ({block['undefined']})"])
            continue
        mal = block.get("malignant") or {}
        ci = (doc.get("ci") or {}).get("balanced_accuracy") if name == "argmax" else block.get("balanced_accuracy_ci")
        rows.append([name, fmt(block.get("accuracy")), fmt(block.get("balanced_accuracy")), fmt_ci(ci),
                     *(fmt((block.get("recall") or {}).get(c)) for c in classes),
                     f"{fmt(mal.get('sensitivity'))} / {fmt(mal.get('specificity'))}"])
    prior = (rules.get("balanced") or {}).get("prior") or {}
    note = ("argmax: the class of highest probability (the headline figures, `pred`). balanced: the class of highest "
            "probability divided by the run's effective training prior (`pred_balanced`), the decision for balanced "
            "accuracy. ")
    if prior:
        note += ("Prior (" + str((rules.get("balanced") or {}).get("prior_source")) + "): "
                 + ", ".join(f"{c} {v:.3f}" for c, v in prior.items()) + ".")
    return Table("Decision rules", "table-decision-rules",
                 ["rule", "accuracy", "balanced accuracy", "95% CI", *(f"recall {c}" for c in classes),
                  "malignant sens. / spec."], rows, note)


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
        ("Data licence", data.get("licence") or UNKNOWN_LICENCE),
        ("Evaluation", f"test-time augmentation {fmt(ev.get('tta'))}; temperature "
                       f"{fmt(ev.get('temperature'))} ({ev.get('temperature_source', 'n/a')}); "
                       f"lesionlab {ev.get('lesionlab_version', 'n/a')}, {ev.get('created', '')}"),
        ("Intended use", INTENDED_USE),
    ]
    if doc.get("subgroups"):
        card.insert(-1, ("Subgroups", summary_text(doc["subgroups"])))
    if doc.get("robustness"):
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
    tables = [headline_table(doc), per_class_table(doc, classes), _confusion_table(doc, classes)]
    tables += [t for t in (decision_rules_table(doc, classes), _referral_table(doc), _runtime_table(doc))
               if t is not None] + _scope_tables(doc)
    if doc.get("subgroups"):
        tables += subgroup_tables(doc["subgroups"])
    if doc.get("robustness"):
        tables += robustness_tables(doc["robustness"], classes)
        plots += report_plots(doc["robustness"], gallery_png)
    tables.append(Table("Classes", "table-classes", ["code", "name"], [[c, names.get(c, c)] for c in classes]))
    return Document(title=f"Evaluation report: {run.get('name', 'run')}",
                    subtitle=f"{data.get('source', 'data')} / {data.get('split', 'split')} - {doc.get('n')} images",
                    kind="run", warnings=warnings, card=card, card_lists=lists, plots=plots, tables=tables,
                    notes=list(doc.get("notes") or []))


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"html": atomic_write_text(out_dir / HTML_FILE, to_html(document)),
            "markdown": atomic_write_text(out_dir / MARKDOWN_FILE, to_markdown(document))}


def read_metrics_doc(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json`` written by ``lesionlab evaluate``, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"metrics file not found: {path}")
    doc = read_json(path, ReportError)
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
        raise MissingFileError(f"not found: {path}")
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
    paths = write_report(run_report(doc, predictions, gallery_png), out_dir or eval_dir)
    seal_enclosing_run(paths["html"].parent)  # the report is part of the run directory it was written into
    return paths
