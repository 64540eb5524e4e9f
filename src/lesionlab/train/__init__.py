"""The training engine: :func:`fit` a run config into a run directory, from small reusable pieces.

Public API::

    from lesionlab.train import fit
    run_dir = fit(load_config("configs/smoke.yaml"))      # -> Path of the run directory
    run = lesionlab.load_run(run_dir)

Pieces: :func:`make_loss`, :func:`make_optimizer`, :func:`make_scheduler`, :func:`make_sampler`,
:class:`EarlyStopping`, :func:`train_one_epoch`, :func:`predict` (probabilities and labels over a loader); the
loop's handlers in :mod:`lesionlab.train.handlers`; a run's data, model and plan in :mod:`lesionlab.train.plans`
(``prepare_data``, ``image_dataset``, ``make_loader``, for benchmarks and other engines).
"""

from lesionlab.train.engine import fit
from lesionlab.train.loop import Precision, predict, seed_everything, train_one_epoch
from lesionlab.train.pieces import (
    EarlyStopping,
    TrainError,
    class_weights,
    make_loss,
    make_optimizer,
    make_sampler,
    make_scheduler,
)

__all__ = ["EarlyStopping", "Precision", "TrainError", "class_weights", "fit", "make_loss", "make_optimizer",
           "make_sampler", "make_scheduler", "predict", "seed_everything", "train_one_epoch"]
