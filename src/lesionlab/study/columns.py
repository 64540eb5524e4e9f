"""The answer export: the one table between the reader-study platform and its analysis.

``lesionlab study export`` writes it (CSV and JSON records), ``lesionlab study simulate`` writes the same columns
for simulated readers, and every analysis function reads it. One row per stored answer. Columns, in order:

| column | type | meaning |
|---|---|---|
| ``study`` | str | the study's id (its name in the definition) |
| ``design`` | str | ``separate``, ``crossover`` or ``revise`` |
| ``participant`` | str | an opaque participant id (never the invite token) |
| ``simulated`` | bool | true for answers from ``lesionlab study simulate``, false for people |
| ``case`` | str | the case's opaque id within the study |
| ``image_id`` | str | the source image id (for the analysis only; participants never see it) |
| ``arm`` | str | ``unassisted``, ``assisted`` or ``faulty`` |
| ``session`` | int | 1-based session of the participant (crossover: the order of arms), else 1 |
| ``step`` | int | 1: the first (or only) answer; 2: the answer after seeing the model (``revise`` design) |
| ``position`` | int | 1-based place of the case in the participant's order within the session |
| ``answer`` | str | a class code (``classes.CLASS_CODES``), empty when timed out without an answer |
| ``confidence`` | float | malignancy confidence 0-100 when the form asks for it, else empty |
| ``management`` | str | the management choice when the form asks for it, else empty |
| ``shown_at`` | str | server time (ISO 8601, UTC) when the image was served |
| ``answered_at`` | str | server time (ISO 8601, UTC) when the answer arrived |
| ``elapsed_ms`` | float | the client's elapsed time from display to answer |
| ``server_elapsed_ms`` | float | ``answered_at - shown_at`` as the server measured it |
| ``timed_out`` | bool | the answer arrived after the time limit plus grace (or never: empty answer) |
| ``truth`` | str | the ground-truth class code |
| ``model_shown`` | bool | whether the model's output was on screen for this answer |
| ``model_top`` | str | the class the shown output named (empty when none was shown) |
| ``model_p_<code>`` | float | the seven probabilities that were shown, one column per class in the fixed order |
| ``model_malignant`` | float | the shown probability of a malignant class (akiec, bcc, mel) |
| ``model_faulty`` | bool | the shown output was deliberately wrong (``faulty`` arm); never shown to participants |
| ``model_run`` | str | the id of the run that computed the outputs (empty when no model is used) |

The model columns hold the output computed for the case when the study was created, even where it was not shown
(``model_shown`` false), so that the analysis can compare readers with the model on the same cases; in the
``faulty`` arm they hold what was shown.

The rules of the designs are defined here too, once, for the platform (which cases an arm reads, how many answers a
case gets, when the model is on screen, which session an arm is read in), the simulated readers (which write the
same rows) and the analysis (which condition an answer belongs to):

* case sets (:func:`arm_case_sets`): in ``separate`` and ``revise`` every arm reads its own, disjoint set of cases;
  in ``crossover`` every arm reads the one set ``all``;
* steps (:func:`answer_steps`): in ``revise`` a case of an arm that shows the model is answered twice, alone (step
  1) and then beside the model's output (step 2); an ``unassisted`` arm's cases are answered once, alone (a
  control set); every other design answers once;
* the model is on screen (:func:`model_on_screen`) in the ``assisted`` and ``faulty`` arms, at step 2 in ``revise``;
* the condition of an answer (:func:`condition_of`), what the reader saw: the arm, except that a ``revise`` first
  answer (step 1) is ``unassisted`` whatever its arm;
* sessions (:func:`session_of`): in ``crossover`` one session per arm, in the participant's order of arms; else
  everything is session 1, and positions run on across the arms in the participant's order.
"""

from __future__ import annotations

from collections.abc import Sequence

from lesionlab.classes import CLASS_CODES

MODEL_PROB_COLUMNS: tuple[str, ...] = tuple(f"model_p_{code}" for code in CLASS_CODES)

EXPORT_COLUMNS: tuple[str, ...] = (
    "study", "design", "participant", "simulated", "case", "image_id", "arm", "session", "step", "position",
    "answer", "confidence", "management", "shown_at", "answered_at", "elapsed_ms", "server_elapsed_ms",
    "timed_out", "truth", "model_shown", "model_top", *MODEL_PROB_COLUMNS, "model_malignant", "model_faulty",
    "model_run",
)

DESIGNS: tuple[str, ...] = ("separate", "crossover", "revise")
ARMS: tuple[str, ...] = ("unassisted", "assisted", "faulty")
BOOL_COLUMNS: tuple[str, ...] = ("simulated", "timed_out", "model_shown", "model_faulty")


def arm_case_sets(design: str, arms: Sequence[str]) -> dict[str, str]:
    """Arm -> the name of the case set it reads: its own (``separate``, ``revise``) or the shared ``all``."""
    return {arm: ("all" if design == "crossover" else arm) for arm in arms}


def answer_steps(design: str, arm: str) -> tuple[int, ...]:
    """The answers a case of ``arm`` gets: ``(1, 2)`` in ``revise`` arms that show the model, else ``(1,)``."""
    return (1, 2) if design == "revise" and arm != "unassisted" else (1,)


def model_on_screen(design: str, arm: str, step: int) -> bool:
    """Whether the model's output is on screen for an answer of ``arm`` at ``step``."""
    return arm != "unassisted" and (design != "revise" or step == 2)


def condition_of(design: str, arm: str, step: int) -> str:
    """What the reader saw when answering: the arm, but ``unassisted`` for a ``revise`` first answer."""
    return "unassisted" if design == "revise" and step == 1 else arm


def session_of(design: str, arm_order: Sequence[str], arm: str) -> int:
    """The 1-based session in which ``arm`` is read: its place in the participant's order (``crossover``), else 1."""
    return list(arm_order).index(arm) + 1 if design == "crossover" else 1
