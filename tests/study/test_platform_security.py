"""Nothing a participant receives reveals the ground truth: a crawl of every participant-facing response of a
completed study (pages, static files, API answers and refusals, images, heatmaps, headers)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from sqlalchemy import select

from lesionlab.classes import CLASS_CODES
from lesionlab.study.storage import Case, CaseTruth

pytestmark = pytest.mark.slow

FORBIDDEN_KEYS = {"truth", "dx", "label", "diagnosis", "image_id", "lesion_id", "correct", "arm", "faulty", "case",
                  "case_id", "variant", "source", "participant", "token", "token_hash", "run", "run_id"}


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _png_chunks(data: bytes) -> set[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = set(), 8
    while i < len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        chunks.add(data[i + 4:i + 8])
        i += 12 + length
    return chunks


@pytest.mark.parametrize("design", ["separate", "revise"])
def test_no_participant_response_reveals_the_truth(tiny_run, study_definition, make_study, serve_study,
                                                   design: str) -> None:
    arms = ["unassisted", "assisted", "faulty"] if design == "separate" else ["assisted", "faulty"]
    definition = study_definition(tiny_run, name=f"crawl-{design}", design=design, arms=arms, show_clinical=True,
                                  time_limit_s=60, faulty={"fraction": 0.5},
                                  form={"confidence": True, "management": ["excise", "follow up", "reassure"]})
    server = serve_study(make_study(definition))
    reader, bystander = server.invite(2)
    responses: list[tuple[str, Any]] = []

    def record(what: str, resp: Any) -> Any:
        responses.append((what, resp))
        return resp

    client = server.client
    for path in ("/", "/join", "/admin", "/healthz", "/docs", "/openapi.json", "/static/../study.json",
                 "/media", "/study.db", "/admin-token.txt"):
        record(path, client.get(path))
    static = resources.files("lesionlab.study") / "static"
    for entry in static.iterdir():
        record(entry.name, client.get(f"/static/{entry.name}"))
    record("state", reader.state())
    record("consent", reader.consent())
    record("bystander-state", bystander.state())
    items = []
    while True:
        item = record("next", reader.next())
        body = item.json()
        if body["phase"] != "case":
            break
        items.append(body)
        record("image", reader.get(body["image"]))
        record("foreign image", bystander.get(body["image"]))  # another participant cannot fetch it
        if body["support"] and "heatmap" in body["support"]:
            record("heatmap", reader.get(body["support"]["heatmap"]))
        answer = {"confidence": 40, "management": "follow up"}
        record("answer", reader.answer(body["item"], "bkl", body["step"], **answer))
        record("repeat", reader.answer(body["item"], "nv", body["step"], **answer))
        if body["step"] == body["steps"]:  # answered for good: the image is gone (revise keeps it for step 2)
            record("old image", reader.get(body["image"]))
    record("bad answer", reader.answer("nope", "mel", confidence=1, management="excise"))
    record("admin as participant", client.get("/api/admin/export.csv", headers=reader.headers))
    record("final state", reader.state())
    assert len(items) == (21 if design == "separate" else 28)

    with server.folder.sessions() as db:
        truths = db.scalars(select(CaseTruth)).all()
        case_ids = [c.id for c in db.scalars(select(Case))]
    secrets_ = [t.image_id for t in truths] + [t.lesion_id for t in truths] + [t.source_sha256 for t in truths]
    secrets_ += [*case_ids, server.folder.admin_token_file().read_text().strip()]
    for what, resp in responses:
        assert resp.status_code < 500, (what, resp.text)
        raw = resp.content
        header_text = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        for secret in secrets_:
            assert secret.encode() not in raw, (what, secret)
            assert secret not in header_text, (what, secret)
        assert "content-disposition" not in resp.headers, what
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("image/png"):
            assert _png_chunks(raw) <= {b"IHDR", b"IDAT", b"IEND"}, what
        if ctype.startswith("application/json"):
            body = resp.json()
            assert not (_keys(body) & FORBIDDEN_KEYS), (what, _keys(body) & FORBIDDEN_KEYS)
            # Class codes appear only where the participant's own answer or the model's output is echoed, and in the
            # form that lists all seven.
            own = {k: v for k, v in body.items() if k not in ("support", "first_answer", "stored", "study")} \
                if isinstance(body, dict) else body
            assert not [s for s in _strings(own) if s in CLASS_CODES], (what, own)
    for what, resp in responses:
        if what in ("foreign image", "old image"):
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    assert {r.status_code for w, r in responses if w in ("/docs", "/openapi.json", "/study.db", "/admin-token.txt",
                                                          "/static/../study.json")} == {404}


def test_invite_links_carry_the_token_in_the_fragment_only() -> None:
    from lesionlab.study.participation import Invite

    link = Invite("p1", "reader 1", "T" * 43).link("https://study.example.org/")
    assert link == "https://study.example.org/join#" + "T" * 43


def test_media_keys_say_nothing_about_the_case(tiny_run, study_definition, make_study) -> None:
    folder = make_study(study_definition(tiny_run, name="keys", arms=["assisted"]))
    names = sorted(p.name for p in (folder / "media").iterdir())
    assert names and all(len(n) == len("x" * 22 + ".png") for n in names)
    manifest = json.loads((folder / "study.json").read_text())
    assert "truth" not in json.dumps(manifest)
