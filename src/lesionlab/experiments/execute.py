"""Running jobs: N local worker processes with a fair share of cores each, or a script for a cluster scheduler.

The local scheduler is generic (a job is a list of argv steps and a log file) so it is tested with trivial real
commands; :mod:`lesionlab.experiments.runner` turns planned runs into ``lesionlab train`` / ``evaluate`` jobs.
A failing job is recorded and reported; it never stops the others. An interrupt (Ctrl-C, SIGTERM) terminates the
running children and leaves every finished run in place, so re-running the grid resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from lesionlab.core.errors import UsageError

#: Thread-count variables read by torch (OpenMP), MKL and OpenBLAS when a worker process starts.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    """One unit of work: ``steps`` run in order (stopping at the first failure), all output appended to ``log``."""

    job_id: str
    steps: tuple[tuple[str, ...], ...]
    log: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    """How a job ended: ``returncode`` 0 is success; ``failed_step`` is the index of the step that failed."""

    job_id: str
    returncode: int
    seconds: float
    log: Path
    failed_step: int | None = None

    @property
    def ok(self) -> bool:
        """True when every step exited with status 0."""
        return self.returncode == 0


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, requested: int | None = None, cores: int | None = None) -> int:
    """``requested`` if given, else an even share of the cores, so N workers never oversubscribe the machine."""
    if requested is not None:
        return requested
    return max(1, (cores or usable_cores()) // max(1, workers))


def thread_env(threads: int) -> dict[str, str]:
    """Environment that limits a child process's math libraries to ``threads`` threads."""
    return dict.fromkeys(THREAD_VARS, str(threads))


class _Children:
    """The running child processes, so an interrupt can terminate exactly the ones this scheduler started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def start(self, argv: Sequence[str], log: IO[str], env: dict[str, str]) -> subprocess.Popen | None:
        with self._lock:
            if self.stopping.is_set():
                return None
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)
            self._procs.add(proc)
            return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def terminate_all(self, grace: float = 10.0) -> None:
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _run_job(job: Job, children: _Children, base_env: dict[str, str]) -> JobResult:
    start = time.monotonic()
    job.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**base_env, **job.env}
    with job.log.open("a", encoding="utf-8") as log:
        for i, argv in enumerate(job.steps):
            log.write(f"\n=== {_stamp()} step {i + 1}/{len(job.steps)}: {shlex.join(argv)}\n")
            log.flush()
            try:
                proc = children.start(argv, log, env)
            except OSError as err:  # e.g. the executable does not exist: a failure of this job only
                log.write(f"=== could not start: {err}\n")
                return JobResult(job.job_id, 127, time.monotonic() - start, job.log, i)
            if proc is None:
                log.write("=== not started: the scheduler is stopping\n")
                return JobResult(job.job_id, -15, time.monotonic() - start, job.log, i)
            code = proc.wait()
            children.done(proc)
            log.write(f"=== {_stamp()} exit status {code}\n")
            log.flush()
            if code != 0:
                return JobResult(job.job_id, code, time.monotonic() - start, job.log, i)
    return JobResult(job.job_id, 0, time.monotonic() - start, job.log)


def run_jobs(jobs: Sequence[Job], workers: int, threads: int | None = None, progress: bool = True,
             on_result: Callable[[JobResult], None] | None = None, desc: str = "runs") -> list[JobResult]:
    """Run ``jobs`` with at most ``workers`` at a time; returns one result per job, in completion order.

    Each child gets ``threads`` math-library threads (default: cores // workers). ``on_result`` is called in the
    calling thread as each job ends (to record status as it happens, so a later kill loses nothing).
    """
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    nthreads = threads_per_worker(workers, threads)
    base_env = {**os.environ, **thread_env(nthreads)}
    children = _Children()
    results: list[JobResult] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lesionlab-job")
    bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not progress or not jobs)
    stack = contextlib.ExitStack()
    stack.enter_context(_sigterm_as_interrupt())
    stack.callback(bar.close)
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    try:
        pending: set[Future[JobResult]] = {pool.submit(_run_job, job, children, base_env) for job in jobs}
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in finished:
                result = fut.result()
                results.append(result)
                if on_result is not None:
                    on_result(result)
                bar.update(1)
                failed = sum(not r.ok for r in results)
                if failed:
                    bar.set_postfix(failed=failed)
    finally:
        if len(results) < len(jobs):  # interrupted or an error in a callback: stop the children we started
            children.terminate_all()
        stack.close()
    return results


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler's or ``kill``'s stop) unwinds like Ctrl-C, so children are stopped.

    Only the main thread can install signal handlers; elsewhere the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def shell_command(steps: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> str:
    """One shell line running the steps in order with ``&&`` (for command files and cluster arrays)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    parts = [shlex.join(step) for step in steps]
    line = " && ".join(parts)
    return f"{prefix} {line}" if prefix else line


def slurm_script(name: str, commands_file: Path, n_tasks: int, log_dir: Path, sbatch: dict[str, str | int | None],
                 extra: Sequence[str] = (), setup: Sequence[str] = (), max_parallel: int | None = None) -> str:
    """A Slurm array script whose task ``i`` runs line ``i + 1`` of ``commands_file``.

    Paths are relative: submit it from the directory the grid was expanded in (``sbatch`` records it as
    ``SLURM_SUBMIT_DIR`` and the script changes there first).
    """
    if n_tasks < 1:
        raise UsageError("a Slurm array needs at least one task; every run of this grid is already finished")
    throttle = f"%{max_parallel}" if max_parallel else ""
    lines = [
        "#!/usr/bin/env bash",
        f"# lesionlab experiment grid '{name}': {n_tasks} runs, one per array task.",
        f"# Written {_stamp()}. Submit it with sbatch from the directory where it was written.",
        f"#SBATCH --job-name={shlex.quote('lesionlab-' + name)}",
        f"#SBATCH --array=0-{n_tasks - 1}{throttle}",
        f"#SBATCH --output={log_dir}/slurm-%A_%a.out",
    ]
    for key, value in sbatch.items():
        if value is not None:
            lines.append(f"#SBATCH --{key.replace('_', '-')}={value}")
    lines += [f"#SBATCH {line}" for line in extra]
    lines += ["set -euo pipefail", 'cd "${SLURM_SUBMIT_DIR:-.}"', *setup,
              f'CMD=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands_file))})',
              'echo "task ${SLURM_ARRAY_TASK_ID}: ${CMD}"', 'eval "${CMD}"', ""]
    return "\n".join(lines)
