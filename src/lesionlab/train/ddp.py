"""Data-parallel entry point: ``torchrun --nproc_per_node=N -m lesionlab.train.ddp --config FILE [key=value ...]``.

The same arguments as ``lesionlab train``; :func:`lesionlab.train.fit` sees torchrun's environment, joins the
process group (gloo on CPU, NCCL on CUDA), shards the training set with ``DistributedSampler`` and lets only rank 0
write the run directory. ``lesionlab train`` launched by torchrun does exactly the same.
"""

from __future__ import annotations

import argparse
import sys

from lesionlab.train.commands import add_arguments, run_train


def main(argv: list[str] | None = None) -> int:
    """Parse ``lesionlab train`` arguments and train (under torchrun: one process per rank)."""
    parser = argparse.ArgumentParser(prog="python -m lesionlab.train.ddp", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.command = "train"
    try:
        return run_train(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if args.debug:
            raise
        print(f"lesionlab train (ddp): error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
