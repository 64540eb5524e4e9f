"""Study definitions, case selection, the three designs, the faulty arm and the export's columns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lesionlab.classes import CLASS_CODES, CLASSES
from lesionlab.study.columns import EXPORT_COLUMNS
from lesionlab.study.create import faulty_output, select_cases, strip_to_png
from lesionlab.study.definition import FaultyConfig, definition_from_dict, load_definition
from lesionlab.study.errors import StudyError
from lesionlab.study.export import answers_frame, cases_frame, write_export

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("change", "message"), [
    ({"arms": ["unassisted", "assisted"]}, "set model.run"),
    ({"design": "revise", "arms": ["unassisted"]}, "revise design"),
    ({"design": "crossover", "arms": ["unassisted"]}, "at least two arms"),
    ({"arms": ["unassisted", "unassisted"]}, "listed twice"),
    ({"arms": ["unassisted", "placebo"]}, "arms.1"),
    ({"cases": {"per_class": {"melanoma": 3}}}, "unknown class codes"),
    ({"cases": {"per_class": None, "image_ids": None}}, "either per_class"),
    ({"time_limit_s": 0}, "time_limit_s"),
    ({"colour": "blue"}, "unknown config key 'colour'"),
    ({"form": {"management": ["excise", "excise"]}}, "distinct"),
    ({"name": "../escape"}, "name"),
])
def test_bad_definitions_are_refused_naming_the_key(study_definition, change: dict, message: str) -> None:
    data = study_definition(arms=["unassisted"])
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    with pytest.raises(StudyError, match=message):
        definition_from_dict(data)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_study_definitions_are_valid(path: Path) -> None:
    definition = load_definition(path)
    assert definition.model is not None and definition.cases.per_class is not None


def test_the_ham10000_contests_are_as_published() -> None:
    first = load_definition(REPO / "configs" / "studies" / "ham10000-gp-162.yaml")
    assert first.time_limit_s is None and first.show_clinical and first.arms == ["unassisted"]
    assert sum(first.cases.counts().values()) == 162
    second = load_definition(REPO / "configs" / "studies" / "ham10000-gp-35x2.yaml")
    assert second.time_limit_s == 45 and second.arms == ["unassisted", "assisted"] and second.design == "separate"
    assert sum(second.cases.counts().values()) == 35


@pytest.mark.realdata
def test_the_contests_draw_their_cases_from_the_shared_test_split(shared_data: Path) -> None:
    from lesionlab.data import open_source

    for name, sizes in (("ham10000-gp-162.yaml", {"unassisted": 162}),
                        ("ham10000-gp-35x2.yaml", {"unassisted": 35, "assisted": 35})):
        definition = load_definition(REPO / "configs" / "studies" / name)
        source = open_source(definition.cases.data)
        cases = select_cases(source.table, definition)
        assert cases["case_set"].value_counts().to_dict() == sizes
        assert set(cases["split"]) == {"test"} and cases["image_id"].is_unique
        again = select_cases(source.table, definition)
        assert again["image_id"].tolist() == cases["image_id"].tolist()  # seeded


def _table(n_per_class: int = 6) -> pd.DataFrame:
    rows = [{"image_id": f"IMG_{c}_{i}", "lesion_id": f"L_{c}_{i}", "dx": c, "split": "test", "age": 50.0,
             "sex": "male", "site": "back"} for c in CLASS_CODES for i in range(n_per_class)]
    return pd.DataFrame(rows)


def test_case_sets_are_drawn_per_class_disjoint_seeded_and_shuffled(study_definition) -> None:
    definition = definition_from_dict(study_definition(arms=["unassisted", "faulty"], model={"support": ["top1"]},
                                                       run=Path("unused"),
                                                       cases={"per_class": {"mel": 2, "nv": 3, "df": 1}}))
    cases = select_cases(_table(), definition)
    assert len(cases) == 12 and cases["image_id"].is_unique
    for arm in ("unassisted", "faulty"):
        counts = cases[cases.case_set == arm]["dx"].value_counts().to_dict()
        assert counts == {"mel": 2, "nv": 3, "df": 1}
    assert cases["dx"].tolist() != sorted(cases["dx"].tolist())  # the pool order says nothing about the class
    assert select_cases(_table(), definition)["image_id"].tolist() == cases["image_id"].tolist()
    with pytest.raises(StudyError, match=r"class df has 6 images .* but 8 are needed"):
        select_cases(_table(), definition_from_dict(study_definition(Path("unused"), cases={"per_class": {"df": 4}})))


def test_explicit_image_ids_are_found_or_named() -> None:
    data = {"name": "ids", "arms": ["unassisted"], "cases": {"image_ids": ["IMG_mel_0", "IMG_nv_1"]}}
    cases = select_cases(_table(), definition_from_dict(data))
    assert sorted(cases["image_id"]) == ["IMG_mel_0", "IMG_nv_1"]
    data["cases"]["image_ids"].append("ISIC_404")
    with pytest.raises(StudyError, match="ISIC_404"):
        select_cases(_table(), definition_from_dict(data))


@pytest.mark.parametrize("mode", ["flip_malignancy", "any_wrong"])
def test_a_faulty_output_names_a_wrong_class_on_top(mode: str) -> None:
    rng = np.random.default_rng(0)
    for truth in CLASS_CODES:
        probs = np.array([0.02, 0.03, 0.05, 0.05, 0.1, 0.7, 0.05])
        out = faulty_output(probs, truth, rng, FaultyConfig(mode=mode))
        top = CLASSES[int(np.argmax(out))]
        assert top.code != truth and sorted(out) == sorted(probs)
        if mode == "flip_malignancy":
            assert top.malignant != next(c for c in CLASSES if c.code == truth).malignant


def test_images_lose_every_metadata() -> None:
    image = Image.new("RGB", (40, 30), (120, 80, 60))
    exif = Image.Exif()
    exif[0x010E] = "ISIC_0024306 mel"  # ImageDescription
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), comment=b"label: mel")
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    assert "exif" in decoded.info
    png = strip_to_png(decoded)
    assert b"ISIC" not in png and b"mel" not in png
    chunks = _png_chunks(png)
    assert set(chunks) <= {b"IHDR", b"IDAT", b"IEND"}, chunks


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = [], 8
    while i < len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        chunks.append(data[i + 4:i + 8])
        i += 12 + length
    return chunks


@pytest.mark.slow
def test_crossover_reads_every_case_in_both_arms_in_separate_sessions(tiny_run, study_definition, make_study,
                                                                       serve_study) -> None:
    definition = study_definition(tiny_run, name="crossover", design="crossover", arms=["unassisted", "assisted"],
                                  model={"support": ["probabilities"]})
    server = serve_study(make_study(definition))
    readers = server.invite(6)
    orders = set()
    for reader in readers:
        reader.consent()
        first = reader.next().json()
        assert first["session"] == 1 and first["sessions"] == 2 and first["session_total"] == 7
        orders.add(first["support"] is None)
        for _ in range(7):
            item = reader.next().json()
            assert item["phase"] == "case" and item["session"] == 1
            reader.answer(item["item"], "nv")
        pause = reader.next().json()
        assert pause["phase"] == "break" and pause["session"] == 2 and pause["available_in_s"] == 0
        assert reader.next().json()["phase"] == "break"  # the next session starts only when asked
        assert reader.finish() == 7
    assert orders == {True, False}  # the order of arms is randomised across participants
    frame = answers_frame(server.folder)
    assert len(frame) == 6 * 14
    for _, rows in frame.groupby("participant"):
        assert set(rows["case"][rows.arm == "unassisted"]) == set(rows["case"][rows.arm == "assisted"])
        assert rows.groupby("arm")["session"].nunique().tolist() == [1, 1]
        assert sorted(rows["session"].unique()) == [1, 2]
    assert (frame["model_shown"] == (frame["arm"] == "assisted")).all()


@pytest.mark.slow
def test_crossover_washout_keeps_the_second_session_closed(tiny_run, study_definition, make_study,
                                                           serve_study) -> None:
    definition = study_definition(tiny_run, name="washout", design="crossover", washout_minutes=60,
                                  model={"support": ["top1"]}, cases={"per_class": {"mel": 1, "nv": 1}})
    server = serve_study(make_study(definition))
    (reader,) = server.invite(1)
    reader.consent()
    for _ in range(2):
        item = reader.next().json()
        reader.answer(item["item"], "mel")
    pause = reader.next(start_session=2).json()
    assert pause["phase"] == "break" and 3500 < pause["available_in_s"] <= 3600


@pytest.mark.slow
def test_revise_records_both_answers_and_faulty_outputs_are_never_signalled(tiny_run, study_definition, make_study,
                                                                            serve_study, tmp_path) -> None:
    definition = study_definition(tiny_run, name="revise-faulty", design="revise", arms=["assisted", "faulty"],
                                  faulty={"fraction": 0.5, "seed": 3}, form={"confidence": True})
    server = serve_study(make_study(definition))
    (reader,) = server.invite(1)
    reader.consent()
    seen_keys = set()
    while True:
        item = reader.next().json()
        if item["phase"] != "case":
            break
        assert item["steps"] == 2
        if item["step"] == 1:
            assert item["support"] is None and item["first_answer"] is None
            reader.answer(item["item"], "bkl", 1, confidence=20)
        else:
            assert item["first_answer"] == {"answer": "bkl", "confidence": 20.0, "management": None}
            assert set(item["support"]) == {"probabilities", "top1", "malignant", "heatmap"}
            seen_keys |= set(item)
            assert reader.get(item["support"]["heatmap"]).status_code == 200
            reader.answer(item["item"], "mel", 2, confidence=80)
    assert not any("fault" in k or "arm" in k for k in seen_keys)
    frame = answers_frame(server.folder)
    assert len(frame) == 28 and list(frame.columns) == list(EXPORT_COLUMNS)
    step1, step2 = frame[frame.step == 1], frame[frame.step == 2]
    assert (step1["answer"] == "bkl").all() and (step2["answer"] == "mel").all()
    assert not step1["model_shown"].any() and step2["model_shown"].all()
    assert not step1["model_faulty"].any() and (step1["model_top"] == "").all()
    faulty = step2[step2.model_faulty]
    assert len(faulty) == 4 and (faulty["arm"] == "faulty").all()  # half of the faulty arm's 7 cases, rounded
    assert (faulty["model_top"] != faulty["truth"]).all()
    probs = faulty[[f"model_p_{c}" for c in CLASS_CODES]].to_numpy()
    assert [CLASS_CODES[i] for i in probs.argmax(axis=1)] == faulty["model_top"].tolist()
    cases = cases_frame(server.folder)
    assert int(cases["faulty"].sum()) == 4 and set(cases.loc[cases.faulty, "arms"]) == {"faulty"}
    assert {"case", "image_id", "truth", "model_malignant", "model_run"} <= set(cases.columns)

    written = write_export(server.folder, tmp_path / "export")
    csv = pd.read_csv(written["answers_csv"], keep_default_na=False)
    assert list(csv.columns) == list(EXPORT_COLUMNS) and len(csv) == 28
    records = json.loads(written["answers_json"].read_text())
    assert len(records) == 28 and list(records[0]) == list(EXPORT_COLUMNS)
    assert records[0]["confidence"] == 20.0 and records[0]["timed_out"] is False


@pytest.mark.slow
def test_cases_per_participant_draws_a_seeded_subset_per_reader(study_definition, make_study, serve_study) -> None:
    definition = study_definition(name="subset", arms=["unassisted"], cases_per_participant=4)
    server = serve_study(make_study(definition))
    readers = server.invite(3)
    sets = []
    for reader in readers:
        reader.consent()
        assert reader.finish() == 4
    frame = answers_frame(server.folder)
    for _, rows in frame.groupby("participant"):
        sets.append(frozenset(rows["case"]))
        assert rows["position"].tolist() == [1, 2, 3, 4]
    assert len(set(sets)) > 1
