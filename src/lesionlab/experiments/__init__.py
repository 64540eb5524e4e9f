"""Experiment grids: expand a grid file into runs, run them (local workers or a cluster array), resume, aggregate.

Typical use: ``lesionlab experiment configs/grids/ham10000-cpu.yaml``; in Python, :func:`load_grid` ->
:func:`expand` -> :func:`prepare_grid` -> :func:`execute_local` -> :func:`aggregate_grid`.
"""

from lesionlab.experiments.grid import ExperimentConfig, load_grid
from lesionlab.experiments.plan import PlannedRun, expand
from lesionlab.experiments.runner import aggregate_grid, execute_local, prepare_grid, write_commands, write_slurm

__all__ = ["ExperimentConfig", "PlannedRun", "aggregate_grid", "execute_local", "expand", "load_grid",
           "prepare_grid", "write_commands", "write_slurm"]
