"""The corrupted test split: cell scores, the summary and its normalisation, reference files, and `evaluate
--corruptions` end to end on a tiny run (cached cells, gallery, report, metrics.json and model card)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.config import load_config
from lesionlab.core.scope import assessment_state
from lesionlab.evaluate.robustness import (
    RobustnessError,
    assessment_states,
    cell_scores,
    cells_frame,
    comparable,
    load_reference,
    reference_record,
    safety_scores,
    summarise,
    summarise_safety,
)
from lesionlab.evaluate.robustness_report import headline_text, heatmap_figure, held_out_table, safety_table


def _cell(name: str, severity: int, ba: float) -> dict:
    return {"corruption": name, "severity": severity, "balanced_accuracy": ba, "balanced_error": 1 - ba,
            "accuracy": ba + 0.1, "recall": dict.fromkeys(CLASS_CODES, ba)}


CONTEXT = {"corruptions_version": 1, "split_name": "dermamnist_c (published)", "n": 908, "image_size": [128, 128],
           "severities": [1, 2], "seed": 0}


def _block(reference: dict | None = None) -> dict:
    cells = [_cell("pixelate", 1, 0.7), _cell("pixelate", 2, 0.5), _cell("motion_blur", 1, 0.78),
             _cell("motion_blur", 2, 0.74)]
    clean = {"balanced_accuracy": 0.8, "accuracy": 0.9, "recall": dict.fromkeys(CLASS_CODES, 0.8)}
    return summarise(cells, clean, reference=reference, context=dict(CONTEXT))


def test_cell_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(7, 300)
    logits = rng.normal(size=(300, 7)) + 2 * np.eye(7)[y]
    scores = cell_scores(y, logits)
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, logits.argmax(1)))
    assert scores["balanced_error"] == pytest.approx(1 - scores["balanced_accuracy"])
    assert scores["recall"]["mel"] == pytest.approx(np.mean(logits[y == 4].argmax(1) == 4))
    absent = cell_scores(np.zeros(5, int), np.eye(7)[[0, 0, 1, 0, 0]])
    assert absent["recall"]["vasc"] is None and absent["balanced_accuracy"] == pytest.approx(0.8)


def test_summary_figures() -> None:
    block = _block()
    pix, mot = block["per_corruption"]["pixelate"], block["per_corruption"]["motion_blur"]
    assert pix["mean_balanced_accuracy"] == pytest.approx(0.6) and pix["relative_drop"] == pytest.approx(0.25)
    assert mot["relative_drop"] == pytest.approx(0.05) and pix["worst_severity"] == 2
    assert block["mean_relative_drop"] == pytest.approx(0.15)
    assert block["mean_corrupted_balanced_accuracy"] == pytest.approx(0.68)
    assert block["worst_corruptions"] == ["pixelate", "motion_blur"]
    assert block["normalised"]["relative_balanced_error"] is None
    assert block["normalised"]["undefined"] == "no reference run given"
    frame = cells_frame(block)
    assert len(frame) == 4 and {"recall_mel", "balanced_error", "family"} <= set(frame.columns)
    assert heatmap_figure(block) is not None


def test_normalisation_against_a_reference() -> None:
    ref = {"name": "ref", **CONTEXT, "clean_balanced_error": 0.3,
           "per_corruption": {"pixelate": {"mean_balanced_error": 0.6}, "motion_blur": {"mean_balanced_error": 0.305}}}
    block = _block(ref)
    norm = block["normalised"]
    # BE ratios: 0.4 / 0.6 and 0.24 / 0.305; summed drops: (0.2 + 0.04) / (0.3 + 0.005)
    assert norm["balanced_error"] == pytest.approx(np.mean([0.4 / 0.6, 0.24 / 0.305]))
    assert norm["relative_balanced_error"] == pytest.approx(0.24 / 0.305)
    assert norm["per_corruption"]["pixelate"]["relative_balanced_error"] == pytest.approx(0.2 / 0.3)
    assert norm["per_corruption"]["motion_blur"]["relative_balanced_error"] is None  # reference drop < 0.01
    for key, value, why in (("n", 1227, "images"), ("corruptions_version", 0, "corruption definitions"),
                            ("image_size", [64, 64], "input size"), ("severities", [1, 2, 3], "severities")):
        other = {**ref, key: value}
        assert why in comparable(block, other)
        assert _block(other)["normalised"]["relative_balanced_error"] is None


def test_reference_files(tmp_path: Path) -> None:
    block = _block()
    record = reference_record(block, "unit reference")
    (tmp_path / "robustness.json").write_text(json.dumps(block))
    (tmp_path / "metrics.json").write_text(json.dumps({"robustness": block, "n": 908}))
    for path in (tmp_path, tmp_path / "robustness.json", tmp_path / "metrics.json"):
        ref = load_reference(path)
        assert ref["per_corruption"]["pixelate"]["mean_balanced_error"] == pytest.approx(0.4)
        assert comparable(block, ref) is None
    assert record["per_corruption"]["pixelate"] == {"mean_balanced_error": pytest.approx(0.4)}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RobustnessError, match="not a robustness record"):
        load_reference(tmp_path / "bad.json")
    with pytest.raises(RobustnessError, match="not found"):
        load_reference(tmp_path / "missing.json")
    shipped = load_reference(None)
    assert shipped["name"] and shipped["per_corruption"] and shipped["corruptions_version"] == 1


@pytest.mark.parametrize(("in_scope", "quality_ok", "uncertain", "state"), [
    (True, True, False, "assessed"), (None, True, None, "assessed"), (True, True, True, "uncertain"),
    (None, True, True, "uncertain"), (False, True, False, "cannot_assess"), (True, False, False, "cannot_assess"),
    (False, False, True, "cannot_assess"), (None, False, None, "cannot_assess"),
])
def test_the_services_rule(in_scope: bool | None, quality_ok: bool, uncertain: bool | None, state: str) -> None:
    assert assessment_state(in_scope, quality_ok, uncertain) == state


def test_safety_figures_of_a_cell() -> None:
    mel, nv = CLASS_CODES.index("mel"), CLASS_CODES.index("nv")
    y = np.array([mel, mel, mel, nv, nv, nv])
    logits = np.eye(7)[[nv, mel, nv, nv, nv, mel]] * 5  # wrong, right, wrong, right, right, wrong
    states = assessment_states(np.array([9.0, 1.0, 1.0, 1.0, 1.0, 1.0]), 5.0,  # the first is out of scope
                               np.array([True, True, True, True, False, True]),  # the fifth fails quality
                               np.array([0.9, 0.9, 0.9, 0.1, 0.9, 0.9]), 0.5)  # the fourth is uncertain
    assert list(states) == ["cannot_assess", "assessed", "assessed", "uncertain", "cannot_assess", "assessed"]
    s = safety_scores(y, logits, states)
    assert (s["cannot_assess"], s["uncertain"], s["assessed"]) == pytest.approx((2 / 6, 1 / 6, 3 / 6))
    assert s["assessed_accuracy"] == pytest.approx(1 / 3)  # right, wrong, wrong
    assert s["confident_errors"] == pytest.approx(2 / 6) and s["confident_mel_misses"] == pytest.approx(1 / 3)
    assert s["assessed_balanced_accuracy"] == pytest.approx(0.25)  # mel 1 of 2, nv 0 of 1
    assert s["unreferred_mel_misses"] is None  # no referral flag given
    # the one confident melanoma miss (the third image) is referred: no silent miss; unreferred, it is one
    referred = np.array([False, False, True, False, False, False])
    assert safety_scores(y, logits, states, referred=referred)["unreferred_mel_misses"] == 0.0
    assert safety_scores(y, logits, states, referred=~referred)["unreferred_mel_misses"] == pytest.approx(1 / 3)
    none = assessment_states(None, None, np.ones(6, bool), np.zeros(6), None)  # nothing fitted: all assessed
    assert set(none) == {"assessed"} and safety_scores(y, logits, none)["confident_errors"] == pytest.approx(0.5)
    nothing = safety_scores(y, logits, np.array(["cannot_assess"] * 6))
    assert nothing["assessed_accuracy"] is None and nothing["confident_errors"] == 0.0


def test_safety_block_and_its_table() -> None:
    def safe(refused: float) -> dict:
        return {"cannot_assess": refused, "uncertain": 0.1, "assessed": 0.9 - refused, "assessed_accuracy": 0.8,
                "assessed_balanced_accuracy": 0.6, "confident_errors": 0.1, "confident_mel_misses": 0.2}

    cells = [{**_cell("pixelate", 1, 0.7), "safety": safe(0.1)}, {**_cell("pixelate", 2, 0.5), "safety": safe(0.3)},
             {**_cell("motion_blur", 1, 0.78), "safety": safe(0.0)}, {**_cell("motion_blur", 2, 0.74),
                                                                      "safety": safe(0.2)}]
    clean = {"balanced_accuracy": 0.8, "accuracy": 0.9, "recall": dict.fromkeys(CLASS_CODES, 0.8)}
    block = summarise(cells, clean, reference=None, context=dict(CONTEXT))
    block["safety"] = summarise_safety(cells, safe(0.05), {"gate": {"method": "mahalanobis", "threshold": 3.0}})
    assert block["safety"]["mean"]["cannot_assess"] == pytest.approx(0.15)
    assert block["safety"]["per_corruption"]["pixelate"]["cannot_assess"] == pytest.approx(0.2)
    assert block["safety"]["per_corruption"]["pixelate"]["at_highest_severity"]["cannot_assess"] == 0.3
    table = safety_table(block)
    assert table.testid == "table-corruption-safety" and len(table.rows) == 1 + 2 * 2 + 1
    assert table.rows[0][:2] == ["clean", "5.0%"] and table.rows[2][0] == "pixelate (severity 2)"
    assert "cannot assess 15.0% of corrupted images (clean 5.0%)" in headline_text(block)
    assert {"safety_cannot_assess", "safety_confident_errors"} <= set(cells_frame(block).columns)
    assert held_out_table(block) is None  # no held-out detectors measured
    # each corruption judged again by the detector fitted without it: fewer flags, more confident misses
    unseen = [{**c, "safety_held_out": {**safe(c["safety"]["cannot_assess"] / 2), "degraded": 0.05,
                                        "confident_mel_misses": 0.4}} for c in cells]
    block["safety"] = summarise_safety(unseen, safe(0.05), {"degradation": {"threshold": 1.0}})
    held = block["safety"]["held_out"]
    assert held["mean"]["cannot_assess"] == pytest.approx(0.075) and held["mean"]["confident_mel_misses"] == 0.4
    assert held["per_corruption"]["motion_blur"]["cannot_assess"] == pytest.approx(0.05)
    table = held_out_table(block)
    assert table.testid == "table-corruption-held-out" and [r[0] for r in table.rows] == [
        "pixelate", "motion_blur", "mean over cells"]
    assert table.rows[0][2] == "20.0% / 10.0%" and table.rows[-1][4] == "20.0% / 40.0%"
    assert "held out of the degradation check: cannot assess 7.5%, confident melanoma misses 40.0%" in \
        headline_text(block)
    assert "safety_held_out_cannot_assess" in cells_frame({**block, "cells": unseen}).columns
    assert block["safety"]["without_check"] is None  # not measured: the table keeps its two-way form
    # and judged by the other checks alone: what the degradation check adds, read off the same evaluation
    both = [{**c, "safety_without_check": {**safe(c["safety"]["cannot_assess"] / 4), "degraded": None,
                                           "confident_mel_misses": 0.5}} for c in unseen]
    block["safety"] = summarise_safety(both, {**safe(0.05), "degraded": 0.02}, {"degradation": {"threshold": 1.0}},
                                       {**safe(0.03), "degraded": None})
    alone = block["safety"]["without_check"]
    assert alone["clean"]["cannot_assess"] == 0.03 and alone["mean"]["cannot_assess"] == pytest.approx(0.0375)
    assert alone["mean"]["degraded"] is None and alone["per_corruption"]["pixelate"]["confident_mel_misses"] == 0.5
    table = held_out_table(block)
    assert [r[0] for r in table.rows] == ["clean", "pixelate", "motion_blur", "mean over cells"]
    assert table.rows[0][1:3] == ["2.0% / –", "3.0% / 5.0% / –"]  # clean: nothing to hold out
    assert table.rows[1][2] == "5.0% / 20.0% / 10.0%" and table.rows[-1][4] == "50.0% / 20.0% / 40.0%"
    assert table.title == "The degradation check: without the check / as fitted / held out"
    assert "without the degradation check: cannot assess 3.8%, confident melanoma misses 50.0%" in \
        headline_text(block)
    frame = cells_frame({**block, "cells": both})
    assert "safety_without_check_cannot_assess" in frame.columns and "safety_without_check_degraded" not in frame
    block["safety"] = None
    assert safety_table(block) is None and "safety layer" not in headline_text(block)


DATA = ["data.source=synthetic", "data.split=lesion", "data.synthetic_n=140", "data.synthetic_size=32",
        "data.image_size=32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny saved run (random test network, clinical fusion) on the synthetic source."""
    from lesionlab.data import MetadataEncoder, open_source, split_hash
    from lesionlab.data.transforms import Preprocessing
    from lesionlab.models import create_model
    from lesionlab.runs import save_run

    cfg = load_config(None, ["model.name=test_efficientnet", "model.pretrained=false", "name=tiny",
                             "model.fusion=concat", *DATA])
    source = open_source(cfg.data)
    encoder = MetadataEncoder.fit(source.table[source.table["split"] == "train"])
    torch.manual_seed(0)
    model = create_model(cfg.model, meta_dim=encoder.dim).eval()
    pre = Preprocessing(size=(32, 32), mean=model.data_config["mean"], std=model.data_config["std"])
    return save_run(tmp_path_factory.mktemp("runs") / "tiny", model, cfg, pre, encoder, split_hash(source.table),
                    {"epoch": 1, "balanced_accuracy": 0.2}, extra={"status": "complete"})


@pytest.mark.slow
def test_evaluate_with_corruptions_end_to_end(run_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", str(run_dir), "--bootstrap", "20", "--timing-images", "0", "--out", str(out),
            "--corruptions", "pixelate,black_corner,characters", "--severities", "1,5"]
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    rob = doc["robustness"]
    assert rob["corruptions"] == ["pixelate", "black_corner", "characters"] and rob["severities"] == [1, 5]
    assert rob["n_cells"] == 6 and rob["cells_reused"] == 0 and rob["n"] == doc["n"]
    assert rob["image_size"] == [32, 32] and rob["clean_check"]["argmax_agreement"] == 1.0
    assert rob["clean_check"]["max_abs_logit_difference"] < 1e-3
    assert rob["clean_balanced_accuracy"] == pytest.approx(doc["balanced_accuracy"])
    assert "not normalised" in json.dumps(rob) or rob["normalised"]["undefined"]  # a 32 px synthetic run
    assert rob["safety"] is None and "cannot assess" not in json.dumps(rob)  # no checks fitted: nothing to measure
    assert {p.name for p in out.iterdir()} >= {"robustness.json", "corruptions.csv", "corruption_gallery.png",
                                               "corruption_cache", "report.html", "model_card.json"}
    assert len(list((out / "corruption_cache").glob("*.npz"))) == 6
    card = json.loads((out / "model_card.json").read_text())
    assert card["robustness"]["mean_relative_drop"] == rob["mean_relative_drop"]
    assert card["subgroups"]["summary"] and doc["subgroups"]["groups"]
    html = (out / "report.html").read_text()
    for testid in ("fig-corruptions", "fig-corruption-gallery", "table-corruptions", "table-corruption-recall",
                   "table-subgroups-site", "card-robustness-(corrupted-test-split)"):
        assert f'data-testid="{testid}"' in html, testid
    printed = capsys.readouterr().out
    assert "robustness: mean relative drop" in printed and "subgroups:" in printed
    # the same evaluation again: every cell comes from the cache, with the same figures
    first = rob["cells"]
    assert main(args) == 0
    again = json.loads((out / "robustness.json").read_text())
    assert again["cells_reused"] == 6 and again["cells"] == first
    # another seed is another corrupted split (noise-free pixelate/black_corner stay; characters change)
    assert main([*args[:-4], "--corruptions", "characters", "--severities", "5", "--corruption-seed", "1"]) == 0
    third = json.loads((out / "robustness.json").read_text())
    assert third["cells_reused"] == 0 and third["seed"] == 1


@pytest.mark.slow
def test_the_safety_layer_is_measured_on_the_corrupted_split(run_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import pandas as pd

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    out = tmp_path / "eval"
    args = ["evaluate", str(run), "--calibrate", "--bootstrap", "0", "--timing-images", "0", "--ood-images", "4",
            "--audit", "none", "--out", str(out),
            "--corruptions", "pixelate,black_corner", "--severities", "1,5"]
    assert main(args) == 0
    rob = json.loads((out / "robustness.json").read_text())
    safety = rob["safety"]
    assert safety["checks"]["gate"]["method"] == "mahalanobis" and safety["checks"]["uncertainty_threshold"] is not None
    for c in [*rob["cells"], {"safety": safety["clean"]}]:
        s = c["safety"]
        assert s["cannot_assess"] + s["uncertain"] + s["assessed"] == pytest.approx(1.0)
        assert 0.0 <= s["confident_errors"] <= s["assessed"]
    doc = json.loads((out / "metrics.json").read_text())
    # clean: the evaluation's own scope report on the same images bounds it (gate rejections, quality flags, the
    # degradation check's flags)
    rejected, flagged = doc["scope"]["gate"]["false_rejection"], doc["scope"]["quality"]["flagged"] / doc["n"]
    degraded = doc["scope"]["degradation"]["flagged_rate"]
    assert safety["checks"]["degradation"]["threshold"] == doc["scope"]["degradation"]["threshold"]
    assert safety["clean"]["degraded"] == pytest.approx(degraded, abs=1.5 / doc["n"])  # fast path: borderline only
    assert rejected - 1e-9 <= safety["clean"]["cannot_assess"] <= rejected + flagged + degraded + 1.5 / doc["n"]
    assert all(0.0 <= c["safety"]["degraded"] <= c["safety"]["cannot_assess"] for c in rob["cells"])
    assert len(list((out / "corruption_cache").glob("*-safety.npz"))) == 4
    frame = pd.read_csv(out / "corruptions.csv")
    assert frame["safety_cannot_assess"].between(0, 1).all()
    assert 'data-testid="table-corruption-safety"' in (out / "report.html").read_text()
    card = json.loads((out / "model_card.json").read_text())
    assert card["robustness"]["safety"]["mean_over_cells"] == safety["mean"]
    # the degradation check fitted again without each corruption's copies judges that corruption's cells too
    assert set(safety["held_out"]["per_corruption"]) == {"pixelate", "black_corner"}
    assert all(c["safety_held_out"]["cannot_assess"] + c["safety_held_out"]["uncertain"]
               + c["safety_held_out"]["assessed"] == pytest.approx(1.0) for c in rob["cells"])
    assert card["robustness"]["safety"]["held_out_mean_over_cells"] == safety["held_out"]["mean"]
    assert 'data-testid="table-corruption-held-out"' in (out / "report.html").read_text()
    assert frame["safety_held_out_confident_errors"].between(0, 1).all()
    # the referral flag as the service raises it: with the run's fitted threshold on the calibrated probabilities
    info = json.loads((run / "run.json").read_text())
    assert safety["referral_threshold"] == info["referral_threshold"] is not None
    for c in [*rob["cells"], {"safety": safety["clean"]}]:
        assert 0.0 <= c["safety"]["unreferred_mel_misses"] <= c["safety"]["confident_mel_misses"]
    # the same cells judged without the degradation check: it can only add refusals and remove confident errors
    alone = safety["without_check"]
    assert card["robustness"]["safety"]["without_check"]["mean"] == alone["mean"]
    for c in [*rob["cells"], {"safety": safety["clean"], "safety_without_check": alone["clean"]}]:
        assert c["safety_without_check"]["cannot_assess"] <= c["safety"]["cannot_assess"] + 1e-12
        assert c["safety_without_check"]["confident_errors"] >= c["safety"]["confident_errors"] - 1e-12
        assert c["safety_without_check"]["degraded"] is None
    # clean, without the check: the gate's rejections and the quality flags alone
    assert rejected - 1e-9 <= alone["clean"]["cannot_assess"] <= rejected + flagged + 1.5 / doc["n"]
    from lesionlab.data import open_source
    from lesionlab.data.corruptions import CORRUPTION_NAMES
    from lesionlab.evaluate.scope import _split, degraded_copies, fit_held_out_degradation
    from lesionlab.runs import load_run

    fitted = load_run(run)
    source = open_source(fitted.config.data)
    [pixelate] = fit_held_out_degradation(fitted, source, True, ["pixelate"]).values()
    _, which, _ = degraded_copies(_split(fitted, source, "train", True, False)[0].pixels, 0)
    # its copies, and only those, left out
    assert pixelate.fit["n_degraded"] == int((which != CORRUPTION_NAMES.index("pixelate")).sum()) < len(which)
    assert main([a for a in args if a != "--calibrate"]) == 0  # again, from the cache, with the same figures
    again = json.loads((out / "robustness.json").read_text())
    assert again["cells_reused"] == 4 and again["safety"] == safety
    # another abstention margin is applied to the cached checks (no cell through the backbone again), and counts
    from lesionlab.runs import update_run_info

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "corruption_cache").glob("*-safety.npz")}
    update_run_info(run, uncertainty={**json.loads((run / "run.json").read_text())["uncertainty"], "threshold": 2.0})
    assert main([a for a in args if a != "--calibrate"]) == 0
    wider = json.loads((out / "robustness.json").read_text())["safety"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "corruption_cache").glob("*-safety.npz")} == stamps
    assert wider["checks"]["uncertainty_threshold"] == 2.0 and wider["mean"]["assessed"] == 0.0  # all uncertain
    assert wider["mean"]["cannot_assess"] == safety["mean"]["cannot_assess"] and wider["mean"]["confident_errors"] == 0
    update_run_info(run, uncertainty=info["uncertainty"])
    # without the run's training data the held-out figures cannot be had: the evaluation says so and goes on
    from lesionlab.data.images import DataError
    from lesionlab.evaluate import evaluation

    def unavailable(*args: object, **kwargs: object) -> None:
        raise DataError("data/HAM10000_metadata.csv: missing")

    monkeypatch.setattr(evaluation, "fit_held_out_degradation", unavailable)
    assert main([a for a in args if a != "--calibrate"]) == 0
    skipped = json.loads((out / "robustness.json").read_text())
    assert skipped["safety"]["held_out"] is None and "HAM10000_metadata.csv: missing" in skipped["safety"][
        "held_out_skipped"]
    assert skipped["safety"]["mean"] == safety["mean"]  # the check itself was measured as before
    warnings = json.loads((out / "metrics.json").read_text())["evaluation"]["warnings"]
    assert any("not measured on corruptions held out of its training: data/HAM10000" in w for w in warnings)


def test_evaluate_rejects_unknown_corruptions(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run_dir), "--corruptions", "fog", "--bootstrap", "0", "--timing-images", "0",
                 "--out", str(run_dir / "eval-bad")]) == 1
    assert "unknown corruption 'fog'" in capsys.readouterr().err


def test_corruptions_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    assert main(["corruptions", "list"]) == 0
    listed = capsys.readouterr().out
    assert "motion_blur" in listed and "black_corner" in listed
    image = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "gallery.png"
    assert main(["corruptions", "gallery", str(image), "--size", "40", "--corruptions", "pixelate,zoom_blur",
                 "--severities", "1-3", "--out", str(out)]) == 0
    with Image.open(out) as g:
        assert g.width > 4 * 80 and g.height > 2 * 80  # 2x tiles below 96 px: clean + 3 severities, 2 rows


@pytest.mark.realdata
@pytest.mark.slow
def test_corrupted_real_test_split(shared_data: Path, real_untrained_run: Path) -> None:
    """The shared DermaMNIST-C test split (908 real images) under two corruptions; a melanoma in the gallery."""
    import pandas as pd

    run = real_untrained_run
    assert main(["evaluate", str(run), "--bootstrap", "0", "--timing-images", "0", "--no-tta", "--corruptions",
                 "black_corner,characters", "--severities", "5"]) == 0
    rob = json.loads((run / "eval-test" / "robustness.json").read_text())
    assert rob["n"] == 908 and rob["split_name"] == "dermamnist_c (published)" and rob["image_size"] == [64, 64]
    meta = pd.read_csv(shared_data / "ham10000" / "HAM10000_metadata.csv").set_index("image_id")
    assert meta.loc[rob["gallery"]["image_id"], "dx"] == "mel" and rob["gallery"]["class"] == "mel"
    if rob["normalised"]["reference"]["name"]:  # the shipped reference is at 128 px: not comparable at 64
        assert "input size" in rob["normalised"]["undefined"]
    doc = json.loads((run / "eval-test" / "metrics.json").read_text())
    sexes = [g for g in doc["subgroups"]["groups"] if g["attribute"] == "sex"]
    assert sum(g["n"] for g in sexes) == 908 and {g["level"] for g in sexes} >= {"male", "female"}
    assert {g["level"] for g in doc["subgroups"]["groups"] if g["attribute"] == "site"} >= {"back", "face", "trunk"}
