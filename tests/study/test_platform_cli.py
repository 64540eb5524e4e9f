"""The platform's commands end to end: create, invite, progress, export, close, migrate, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lesionlab.cli import main
from lesionlab.study.columns import EXPORT_COLUMNS

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _token(link: str) -> str:
    return link.split("#", 1)[1]


def test_create_invite_answer_progress_close_export(tiny_run, study_definition, tmp_path, capsys,
                                                    serve_study) -> None:
    definition = study_definition(tiny_run, name="cli-study", time_limit_s=45)
    yaml_path = tmp_path / "cli-study.yaml"
    yaml_path.write_text(yaml.safe_dump(definition))
    study = tmp_path / "studies" / "cli-study"
    assert main(["study", "create", str(yaml_path), "--out", str(study)]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "unassisted: 7, assisted: 7" in out and "admin-token.txt" in out
    assert (study / "admin-token.txt").stat().st_mode & 0o777 == 0o600
    assert main(["study", "create", str(yaml_path), "--out", str(study)]) == 1  # never over an existing study
    assert "already holds a study" in capsys.readouterr().err

    invites = tmp_path / "invites.csv"
    assert main(["study", "invite", str(study), "--n", "3", "--base-url", "https://derm.example.org",
                 "--label", "gp-", "--out", str(invites)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(re.search(r"https://derm\.example\.org/join#[\w-]{43}$", ln) for ln in lines)
    assert lines[0].startswith("gp-1\t")
    links = pd.read_csv(invites)["link"].tolist()
    assert links == [ln.split("\t")[-1] for ln in lines]

    server = serve_study(study)
    client = server.client
    for n, link in enumerate(links[:2]):
        headers = {"Authorization": f"Bearer {_token(link)}"}
        client.post("/api/consent", headers=headers)
        for _ in range(3 + 8 * n):  # the first reader answers 3 cases, the second all 14 (and asks once more)
            item = client.post("/api/next", headers=headers).json()
            if item["phase"] != "case":
                break
            assert client.post("/api/answer", headers=headers,
                               json={"item": item["item"], "answer": "mel"}).status_code == 200

    assert main(["study", "progress", str(study)]) == 0
    out = capsys.readouterr().out
    assert "3 participants, 2 started, 0 finished" in out
    assert main(["study", "progress", str(study), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["unassisted"] == {"answered": 10, "timed_out": 0, "required": 21}
    assert report["totals"]["assisted"]["answered"] == 4

    assert main(["study", "close", str(study)]) == 0
    assert "closed" in capsys.readouterr().out
    assert main(["study", "invite", str(study), "--n", "1"]) == 1
    assert "closed" in capsys.readouterr().err
    assert main(["study", "migrate", str(study)]) == 0
    assert "0001 -> 0001" in capsys.readouterr().out

    assert main(["study", "export", str(study), "--out", str(tmp_path / "export")]) == 0
    assert "14 answers" in capsys.readouterr().out
    answers = pd.read_csv(tmp_path / "export" / "answers.csv", keep_default_na=False)
    assert list(answers.columns) == list(EXPORT_COLUMNS) and len(answers) == 14
    assert set(answers["truth"]) <= {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    records = json.loads((tmp_path / "export" / "answers.json").read_text())
    assert [list(r) for r in records] == [list(EXPORT_COLUMNS)] * 14
    assert records[0]["model_run"].startswith("tiny@")
    cases = pd.read_csv(tmp_path / "export" / "cases.csv")
    assert len(cases) == 14 and cases["model_run"].nunique() == 1


def test_commands_refuse_what_is_not_a_study(tmp_path, capsys) -> None:
    assert main(["study", "progress", str(tmp_path)]) == 1
    assert "not a study folder" in capsys.readouterr().err
    definition = REPO / "configs" / "studies" / "ham10000-gp-35x2.yaml"
    assert main(["study", "export", str(definition)]) == 1
    assert "create the study first" in capsys.readouterr().err
    assert main(["study", "create", str(definition), "cases.per_class.melanoma=3"]) == 1
    assert "unknown class codes" in capsys.readouterr().err


@pytest.mark.realdata
def test_the_35x2_contest_on_the_shared_data(shared_data, tiny_run, tmp_path, capsys) -> None:
    definition = REPO / "configs" / "studies" / "ham10000-gp-35x2.yaml"
    study = tmp_path / "contest"
    assert main(["study", "create", str(definition), f"model.run={tiny_run}", "--out", str(study)]) == 0
    assert "real images" in capsys.readouterr().out
    manifest = json.loads((study / "study.json").read_text())
    assert manifest["cases"] == {"unassisted": 35, "assisted": 35} and manifest["data"]["synthetic"] is False
    assert main(["study", "export", str(study)]) == 0
    cases = pd.read_csv(study / "export" / "cases.csv")
    assert len(cases) == 70 and cases["image_id"].str.startswith("ISIC_").all()
    assert list(pd.read_csv(study / "export" / "answers.csv").columns) == list(EXPORT_COLUMNS)
