"""Data-parallel entry point: ``torchrun --nproc_per_node=N -m lesionlab.train.ddp [RUN] --config FILE [k=v ...]``.

The same arguments as ``lesionlab train``; :func:`lesionlab.train.fit` sees torchrun's environment, joins the
process group (gloo on CPU, NCCL on CUDA), shards the training set with ``DistributedSampler`` and lets only rank 0
write the run directory. ``lesionlab train`` launched by torchrun does exactly the same.
"""

from __future__ import annotations

import argparse
import sys

from lesionlab.core.argparsing import parse_args, run_command
from lesionlab.train.commands import add_arguments, run_train


def main(argv: list[str] | None = None) -> int:
    """Parse ``lesionlab train`` arguments and train (under torchrun: one process per rank)."""
    parser = argparse.ArgumentParser(prog="python -m lesionlab.train.ddp", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    args = parse_args(parser, argv)
    args.func = run_train
    return run_command(args, "train (ddp)")


if __name__ == "__main__":
    sys.exit(main())
