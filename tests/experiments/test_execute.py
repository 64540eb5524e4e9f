"""The local scheduler, with real (trivial) child processes, and the cluster script writers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lesionlab.experiments.execute import (
    Job,
    JobResult,
    run_jobs,
    shell_command,
    slurm_script,
    threads_per_worker,
)

PY = sys.executable


def py(code: str) -> tuple[str, ...]:
    return (PY, "-c", code)


def test_jobs_run_in_parallel_with_logs_and_thread_limits(tmp_path: Path) -> None:
    jobs = [Job(f"j{i}", (py(f"import os,time; time.sleep(0.5); print('hello {i}', os.environ['OMP_NUM_THREADS'])"),),
                tmp_path / f"j{i}.log") for i in range(4)]
    start = time.monotonic()
    results = run_jobs(jobs, workers=4, threads=3, progress=False)
    elapsed = time.monotonic() - start
    assert sorted(r.job_id for r in results) == ["j0", "j1", "j2", "j3"]
    assert all(r.ok for r in results)
    assert elapsed < 4 * 0.5 + 1.5  # ran side by side, not one after another
    for i in range(4):
        assert f"hello {i} 3" in (tmp_path / f"j{i}.log").read_text()


def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path: Path) -> None:
    marker = tmp_path / "second-step-ran"
    jobs = [
        Job("bad", (py("import sys; print('boom'); sys.exit(7)"), py(f"open({str(marker)!r}, 'w')")),
            tmp_path / "b.log"),
        Job("good", (py("print('a')"), py("print('b')")), tmp_path / "g.log"),
        Job("missing-exe", (("/nonexistent/lesionlab-binary",),), tmp_path / "m.log"),
    ]
    seen: list[JobResult] = []
    results = {r.job_id: r for r in run_jobs(jobs, workers=1, progress=False, on_result=seen.append)}
    assert [r.job_id for r in seen] and len(seen) == 3
    assert results["bad"].returncode == 7 and results["bad"].failed_step == 0
    assert not marker.exists()  # steps stop at the first failure
    assert results["good"].ok and results["good"].failed_step is None
    assert results["missing-exe"].returncode == 127
    log = (tmp_path / "b.log").read_text()
    assert "boom" in log and "exit status 7" in log
    assert "could not start" in (tmp_path / "m.log").read_text()


def test_an_error_while_running_terminates_the_children(tmp_path: Path) -> None:
    jobs = [Job("fast", (py("pass"),), tmp_path / "f.log"),
            Job("slow", (py("import time; time.sleep(60)"),), tmp_path / "s.log")]

    def explode(result: JobResult) -> None:
        raise RuntimeError(f"callback failed after {result.job_id}")

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="callback failed after fast"):
        run_jobs(jobs, workers=2, progress=False, on_result=explode)
    assert time.monotonic() - start < 20
    assert "exit status" in (tmp_path / "s.log").read_text()  # the sleeping child was terminated, not left behind


def test_threads_per_worker_shares_the_cores() -> None:
    assert threads_per_worker(2, cores=16) == 8
    assert threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(2, requested=5, cores=2) == 5
    with pytest.raises(ValueError, match="workers"):
        run_jobs([], workers=0)


def test_shell_command_quotes_and_chains(tmp_path: Path) -> None:
    line = shell_command([("echo", "a b"), ("echo", "it's")], {"OMP_NUM_THREADS": "2"})
    assert line == "OMP_NUM_THREADS=2 echo 'a b' && echo 'it'\"'\"'s'"
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout
    assert out == "a b\nit's\n"


def test_slurm_script_runs_the_task_line(tmp_path: Path) -> None:
    commands = tmp_path / "grid.commands.txt"
    commands.write_text("echo first\necho second > out.txt\n")
    text = slurm_script("toy", commands, 2, tmp_path / "logs", {"gres": "gpu:1", "time": "02:00:00", "mem": None},
                        extra=["--qos=normal"], setup=["echo setup"], max_parallel=4)
    assert "#SBATCH --array=0-1%4" in text and "#SBATCH --gres=gpu:1" in text and "#SBATCH --time=02:00:00" in text
    assert "--mem" not in text and "#SBATCH --qos=normal" in text
    script = tmp_path / "grid.sh"
    script.write_text(text)
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_SUBMIT_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    assert (tmp_path / "out.txt").read_text() == "second\n"
    with pytest.raises(ValueError, match="already finished"):
        slurm_script("toy", commands, 0, tmp_path, {})
