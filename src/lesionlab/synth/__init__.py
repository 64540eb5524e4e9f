"""Synthetic lesion images: a progressive, code-conditioned InfoGAN with WGAN-GP, and measures of what its images
are worth.

Public API::

    from lesionlab.synth import load_synth_config, train_synth, load_synth_run, evaluate_synth
    run_dir = train_synth(load_synth_config("configs/synth/cpu-32.yaml"))
    run = load_synth_run(run_dir)                                   # EMA generator + code sampler
    labels, _ = run.draw_labels(70, np.random.default_rng(0), balanced=True)
    images = run.generate(labels, seed=0)                           # uint8 [N, R, R, 3]
    sample_to_folder(run, "out/", n=1000, balanced=True)            # HAM10000-layout SYNTHETIC set
    evaluate_synth(run_dir, usefulness=True)                        # report in RUN/eval/

Modules: ``networks`` (generator, critic), ``codes`` (the structured code), ``schedule``, ``batches`` (real
images), ``checkpoint``, ``training`` (the loop), ``run`` (run directory),
``sample``, ``traverse``, ``features`` + ``fidelity`` (FD/KID/precision-recall on Lite0 features), ``evaluation``,
``usefulness``, ``report``, ``commands`` (CLI).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "SynthConfig": "config", "load_synth_config": "config",
    "train_synth": "training", "stage_plan": "schedule",
    "SynthRun": "run", "load_synth_run": "run",
    "CodeLayout": "codes", "CodeRequest": "codes", "Labels": "codes",
    "sample_to_folder": "sample", "traverse": "traverse",
    "evaluate_synth": "evaluation", "SynthError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lesionlab.synth' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lesionlab.synth.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
