"""``lesionlab ensemble RUN RUN ... --out DIR``: several trained runs as one run directory (their logits averaged).

The ensemble directory is an ordinary run (``model.safetensors`` with every member's weights under
``members.<i>.``, ``run.json`` whose ``model.ensemble`` lists the members' architectures), so ``lesionlab evaluate``,
``serve``, ``predict`` and ``export --onnx`` use it unchanged. The members must agree on everything a run feeds its
network with: preprocessing, metadata encoder, test-time views, and the split they were trained on (an ensemble of
runs that saw different images would make its test figures meaningless). ``evaluate --calibrate`` then fits the
ensemble's own temperature and referral threshold on the shared validation split.

:func:`fit_seed_ensemble` is the one-command form behind ``train.ensemble_seeds`` (the ``best`` preset): it trains
the config once per seed into ``RUN/members/seed-<s>`` and writes their ensemble into ``RUN``. Each member is an
ordinary run (resumable, with its own manifest, left out of the ensemble's), identical to training the config with
``train.seed=<s>``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lesionlab.config import RunConfig, build_config, dump_config, with_legacy_defaults
from lesionlab.core.io import file_sha256
from lesionlab.core.version import __version__
from lesionlab.runs import (
    CONFIG_FILE,
    FORMAT_VERSION,
    INFO_FILE,
    WEIGHTS_FILE,
    RunError,
    atomic_save_state_dict,
    atomic_write_text,
    read_info,
    read_weights,
    seal_run,
)
from lesionlab.train.pieces import TrainError

log = logging.getLogger(__name__)

#: The folder of a seed ensemble's member runs, inside the ensemble's run directory.
MEMBERS_DIR = "members"

#: run.json fields every member must share (what the network is fed with, and what it was trained on).
SHARED = (("preprocessing",), ("metadata_encoder",), ("split", "hash"))
#: Training settings every member must share (test-time views, and the prior the balanced rule divides by); read from
#: each member's resolved config, so that a key an older run.json lacks counts as the value it meant then.
SHARED_TRAIN = ("tta", "tta_views", "class_weights", "sampler", "logit_adjust", "focal_gamma")


def _field(info: dict[str, Any], path: Sequence[str]) -> Any:
    node: Any = info
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _shared(info: dict[str, Any], where: Path) -> dict[str, Any]:
    """The fields of ``info`` that every member must share, by dotted name."""
    try:
        train = build_config(RunConfig, with_legacy_defaults(info.get("config")), where=f"{where / INFO_FILE} (config)")
    except ValueError as err:
        raise TrainError(str(err)) from None
    return {**{".".join(key): _field(info, key) for key in SHARED},
            **{f"config.train.{key}": getattr(train.train, key) for key in SHARED_TRAIN}}


def make_ensemble(runs: Sequence[str | Path], out_dir: str | Path, config: RunConfig | None = None) -> Path:
    """Write the ensemble of ``runs`` (at least two) into ``out_dir``; returns it.

    ``config``: the recipe that trained the members (``train.ensemble_seeds``), saved as the ensemble's config so that
    the same command finds the ensemble complete; without it the first member's config is kept, commented.
    """
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise TrainError("an ensemble needs at least two runs")
    out = Path(out_dir)
    if out.resolve() in {p.resolve() for p in paths}:
        raise TrainError(f"{out}: the ensemble cannot be written into one of its members")
    infos = [read_info(p) for p in paths]
    first_shared = _shared(infos[0], paths[0])
    for path, info in zip(paths[1:], infos[1:], strict=True):
        for key, value in _shared(info, path).items():
            if value != first_shared[key]:
                raise TrainError(f"{path}: {key} differs from {paths[0]}'s; the members of an ensemble must share "
                                 "preprocessing, metadata encoder, test-time views, training split and class "
                                 "weighting (weights, sampler, logit adjustment)")
    state = {}
    for i, path in enumerate(paths):
        state.update({f"members.{i}.{k}": v for k, v in read_weights(path / WEIGHTS_FILE).items()})
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_state_dict(out / WEIGHTS_FILE, state, metadata={"format": "pt", "lesionlab": __version__})
    first = infos[0]
    seconds = [float((i.get("training") or {}).get("seconds") or 0.0) for i in infos]
    # Fitted artifacts and the file manifest belong to the first member's directory, not to the ensemble's: dropped
    # (evaluate --calibrate fits the ensemble's own), and the manifest is written afresh by seal_run.
    member_only = ("files", "scope", "uncertainty", "quality")
    kept = {k: v for k, v in first.items() if k not in member_only}
    info = {**kept, "format_version": FORMAT_VERSION, "lesionlab_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": "ensemble", "head": "mean of the members' logits", "fusion": first["model"].get("fusion"),
                      "meta_dim": first["model"].get("meta_dim"), "ensemble": [i["model"] for i in infos],
                      "parameters": sum(int(i["model"].get("parameters") or 0) for i in infos)},
            "ensemble": {"members": [{"run": str(p), "name": p.name, "best": i.get("best"), "training_seconds": s,
                                      "weights_sha256": file_sha256(p / WEIGHTS_FILE)[:12]}
                                     for p, i, s in zip(paths, infos, seconds, strict=True)]},
            "training": {"mode": "ensemble", "seconds": sum(seconds)},
            "best": None, "temperature": None, "referral_threshold": None, "calibration": None, "referral": None,
            "status": "complete"}
    if config is not None:
        info["config"] = config.model_dump(mode="json")
        atomic_write_text(out / CONFIG_FILE, dump_config(config))
    else:
        config_text = ((paths[0] / CONFIG_FILE).read_text(encoding="utf-8") if (paths[0] / CONFIG_FILE).is_file()
                       else "")
        atomic_write_text(out / CONFIG_FILE, f"# ensemble of {len(paths)} runs; the first member's config:\n"
                                             f"{config_text}")
    seal_run(out, info)
    return out


def member_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of a seed ensemble's member: the recipe with ``train.seed=seed`` and no ensemble (pure)."""
    return cfg.model_copy(update={"name": f"{cfg.name}-seed{seed}",
                                  "train": cfg.train.model_copy(update={"seed": seed, "ensemble_seeds": []})})


def fit_seed_ensemble(cfg: RunConfig, run_dir: Path, resume: bool | None, progress: bool,
                      callbacks: Sequence[Any] = (), *, fit_member: Callable[..., Path],
                      check_run_dir: Callable[[Path, RunConfig, bool | None], str]) -> Path:
    """Train ``cfg`` once per ``train.ensemble_seeds`` into ``run_dir/members/seed-<s>``, then write their ensemble
    into ``run_dir``; returns ``run_dir``.

    Called again, it resumes the member that was interrupted, skips the finished ones and ends as an uninterrupted
    call would; a complete ensemble with the same config is left as it is. ``resume`` as for
    :func:`lesionlab.train.fit`: ``True`` requires members to continue, ``False`` refuses a used directory.
    ``fit_member`` and ``check_run_dir`` are the engine's (passed in, so that this module does not import it).
    """
    from lesionlab.train.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise TrainError("train.ensemble_seeds trains its members one after another in one process; run it without "
                         "torchrun, or train each member data-parallel and join them with `lesionlab ensemble`")
    members_dir = run_dir / MEMBERS_DIR
    if resume is False and run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir}: already holds a run; resume it (--resume), or choose another run directory")
    if (run_dir / INFO_FILE).is_file() and check_run_dir(run_dir, cfg, None) == "complete":
        log.info("%s already holds a complete ensemble; nothing to do", run_dir)
        return run_dir
    if resume and not members_dir.is_dir():
        raise RunError(f"{members_dir}: nothing to resume (no member runs in {run_dir})")
    seeds = cfg.train.ensemble_seeds
    run_dir.mkdir(parents=True, exist_ok=True)  # the recipe first, so that `train RUN --resume` finds it after a kill
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    members = []
    for i, seed in enumerate(seeds, start=1):
        member_dir = members_dir / f"seed-{seed}"
        log.info("ensemble member %d of %d (train.seed=%d): %s", i, len(seeds), seed, member_dir)
        members.append(fit_member(member_config(cfg, seed), run_dir=member_dir, resume=None, progress=progress,
                                  callbacks=callbacks))
    make_ensemble(members, run_dir, config=cfg)
    log.info("%s: ensemble of %d members (seeds %s)", run_dir, len(members), ", ".join(map(str, seeds)))
    return run_dir
