"""Running a grid end to end with a stand-in CLI: scheduling, failures, resume, commands files and aggregation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lesionlab.config import ConfigError
from lesionlab.experiments.grid import load_grid
from lesionlab.experiments.plan import expand
from lesionlab.experiments.runner import aggregate_grid, execute_local, pending_runs, write_commands, write_slurm

FAKE = (sys.executable, str(Path(__file__).with_name("fake_cli.py")))


def make_grid(tmp_path: Path, models: dict | None = None, **extra: object) -> Path:
    grid = {
        "name": "toy",
        "base": {"data": {"source": "synthetic"}},
        "axes": {
            "model": models or {"m1": {"model.name": "resnet18"}, "m2": {"model.name": "mobilenetv2_100"}},
            "resolution": {"64x64": {"data.image_size": [64, 64]}, "48x48": {"data.image_size": [48, 48]}},
            "clinical": {"off": {"model.fusion": "none"}, "on": {"model.fusion": "concat"}},
        },
        "repeat": {"seeds": [0, 1, 2]},
        "evaluate": {"split": "test", "tta": True},
        "compare": ["resolution", "clinical"],
        "workers": 2,
        "output_dir": str(tmp_path / "out"),
        **extra,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_grid_runs_resumes_and_aggregates(tmp_path: Path) -> None:
    cfg, base = load_grid(make_grid(tmp_path))
    plan = expand(cfg, base)
    empty, _ = aggregate_grid(cfg, plan)  # nothing finished yet: empty tables and a note, not an error
    assert empty.results.empty and "no finished runs yet" in empty.notes
    results = execute_local(plan, cfg, progress=False, exe=FAKE)
    assert len(results) == 24 and all(r.ok for r in results)
    assert not pending_runs(plan)
    status = json.loads((cfg.output_dir / "status.json").read_text())
    assert len(status) == 24 and {s["status"] for s in status.values()} == {"ok"}
    run = plan[0]
    assert "training" in (run.run_dir / "experiment.log").read_text()
    assert json.loads((run.run_dir / "run.json").read_text())["threads"] == "1"  # 2 cores / 2 workers here
    assert json.loads((run.eval_dir / "metrics.json").read_text())["tta"] is True

    # resume: nothing left to do; a lost evaluation re-runs only the evaluation step
    assert execute_local(plan, cfg, progress=False, exe=FAKE) == []
    (plan[3].eval_dir / "metrics.json").unlink()
    again = execute_local(plan, cfg, progress=False, exe=FAKE)
    assert [r.job_id for r in again] == [plan[3].run_id]
    assert (plan[3].run_dir / "train_calls.txt").read_text() == "1"

    tables, paths = aggregate_grid(cfg, plan)
    frame = pd.read_csv(cfg.output_dir / "results.csv")
    assert len(frame) == 24 and {"model", "resolution", "clinical", "seed", "accuracy"} <= set(frame.columns)
    # accuracy = 0.70 + 0.10 [concat] + 0.02 [width 64] + 0.01 seed; mean over seeds 0,1,2 adds 0.01, sd 0.01
    acc = tables.tables["accuracy"]
    assert list(acc.columns) == ["64x64 / off", "64x64 / on", "48x48 / off", "48x48 / on"]
    assert acc.loc["m1", "64x64 / on"] == "0.830 ± 0.010"
    assert acc.loc["m2", "48x48 / off"] == "0.710 ± 0.010"
    assert tables.tables["error_rate"].loc["m2", "48x48 / off"] == "0.290 ± 0.010"
    supp = tables.tables["supplementary: per-class TPR (sensitivity)"]
    assert list(supp.columns) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert supp.loc["m1 / 64x64 / on", "mel"] == "0.830 ± 0.010"
    assert supp.loc["m1 / 64x64 / on", "df"] == "-"  # undefined in every run
    tests = tables.tests_table
    assert len(tests) == 8  # (resolution: 2 models x 2 clinical) + (clinical: 2 models x 2 resolutions)
    row = tests[(tests.axis == "clinical") & (tests.within == "model=m1, resolution=64x64")].iloc[0]
    assert (row.a, row.b, row.n_a, row.n_b) == ("off", "on", 3, 3)
    assert row.U == 0.0 and row.rank_biserial_r == -1.0 and row.p == pytest.approx(0.1)
    md = (cfg.output_dir / "tables.md").read_text()
    assert "24 of 24 runs finished" in md and "| m1 | 0.730 ± 0.010 |" in md
    assert cfg.output_dir / "tests.json" in paths and (cfg.output_dir / "report.html").is_file()


def test_failures_are_recorded_without_stopping_the_grid(tmp_path: Path) -> None:
    cfg, base = load_grid(make_grid(tmp_path, {"ok": {"model.name": "resnet18"}, "bad": {"model.name": "broken"}}),
                          ["repeat.seeds=[0]"])
    plan = expand(cfg, base)
    results = execute_local(plan, cfg, progress=False, exe=FAKE)
    failed = sorted(r.job_id for r in results if not r.ok)
    assert failed == sorted(r.run_id for r in plan if r.labels["model"] == "bad")
    status = json.loads((cfg.output_dir / "status.json").read_text())
    assert status[failed[0]]["failed_step"] == "train" and status[failed[0]]["returncode"] == 3
    assert "cannot be built" in Path(status[failed[0]]["log"]).read_text()
    tables, _ = aggregate_grid(cfg, plan)
    assert len(tables.results) == 4
    assert any("4 of 8 runs not finished" in n for n in tables.notes)
    assert any("skipped, no finished runs on one side" in n for n in tables.notes) or len(tables.tests) == 4


def test_commands_and_slurm_files_list_only_unfinished_runs(tmp_path: Path) -> None:
    cfg, base = load_grid(make_grid(tmp_path), ["repeat.seeds=[0]"])
    plan = expand(cfg, base)
    execute_local(plan[:3], cfg, progress=False, exe=FAKE)
    commands = tmp_path / "cmds.txt"
    assert write_commands(plan, cfg, commands) == 5
    lines = commands.read_text().splitlines()
    assert lines[0].startswith("lesionlab train --config ") and " && lesionlab evaluate " in lines[0]
    assert plan[3].run_id in lines[0] and "--tta" in lines[0]
    cfg_file = lines[0].split("--config ")[1].split()[0]
    assert yaml.safe_load(Path(cfg_file).read_text())["name"] == plan[3].run_id
    script, n = write_slurm(plan, cfg, tmp_path / "grid.sh")
    assert n == 5 and script == tmp_path / "grid.commands.txt"
    text = (tmp_path / "grid.sh").read_text()
    assert "#SBATCH --array=0-4" in text
    # the array task runs its line (here through a shim named lesionlab that is the stand-in CLI)
    shim = tmp_path / "bin" / "lesionlab"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {FAKE[0]} {FAKE[1]} \"$@\"\n")
    shim.chmod(0o755)
    env = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_SUBMIT_DIR": str(Path.cwd()), "PATH": f"{shim.parent}:/usr/bin:/bin"}
    subprocess.run(["bash", str(tmp_path / "grid.sh")], env=env, check=True, capture_output=True)
    assert plan[3].is_finished and not plan[4].is_finished


RUN_GRID = """
import sys
from lesionlab.config import ConfigError
from lesionlab.experiments.grid import load_grid
from lesionlab.experiments.plan import expand
from lesionlab.experiments.runner import execute_local
cfg, base = load_grid(sys.argv[1])
execute_local(expand(cfg, base), cfg, progress=False, exe=(sys.executable, sys.argv[2]))
"""


def test_a_killed_grid_stops_its_runs_and_resumes(tmp_path: Path) -> None:
    grid = make_grid(tmp_path, {"fast": {"model.name": "resnet18"}, "slow": {"model.name": "sleepy"}},
                     repeat={"seeds": [0]})
    cfg, base = load_grid(grid)
    plan = expand(cfg, base)
    slow = [r for r in plan if r.labels["model"] == "slow"]
    proc = subprocess.Popen([sys.executable, "-c", RUN_GRID, str(grid), FAKE[1]],
                            env={**os.environ, "FAKE_SLEEP_MODEL": "sleepy"})
    deadline = time.monotonic() + 120
    while not any((r.run_dir / "pid.txt").is_file() for r in slow):
        assert proc.poll() is None and time.monotonic() < deadline, "the slow runs never started"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    for run in slow:  # the sleeping trainers were terminated with the grid, not left running
        pid_file = run.run_dir / "pid.txt"
        if pid_file.is_file():
            with pytest.raises(ProcessLookupError):
                os.kill(int(pid_file.read_text()), 0)
    done_before = {r.run_id for r in plan if r.is_finished}
    assert done_before and not any(r.is_finished for r in slow)
    # resume: only the unfinished runs run again
    again = execute_local(plan, cfg, progress=False, exe=FAKE)
    assert {r.job_id for r in again} == {r.run_id for r in plan} - done_before
    assert all(r.is_finished for r in plan)
    assert all((r.run_dir / "train_calls.txt").read_text() == "1" for r in plan)


def test_extra_evaluations_join_the_results_under_their_name(tmp_path: Path) -> None:
    path = make_grid(tmp_path, models={"m1": {"model.name": "resnet18"}}, evaluate={
        "split": "test", "extra_evaluations": [{"name": "d8", "args": ["--tta-views", "dihedral"]},
                                               {"name": "low", "args": [], "where": {"resolution": ["48x48"]}}]})
    cfg, base = load_grid(path)
    plan = expand(cfg, base)
    results = execute_local(plan, cfg, progress=False, exe=FAKE)
    assert len(results) == 12 and all(r.ok for r in results)
    run = plan[0]
    assert (run.extra_eval_dir("d8") / "metrics.json").is_file() and run.is_finished
    (run.extra_eval_dir("d8") / "metrics.json").unlink()  # a lost extra evaluation: evaluated again, not retrained
    assert not run.is_finished
    assert [r.job_id for r in execute_local(plan, cfg, progress=False, exe=FAKE)] == [run.run_id]
    assert (run.run_dir / "train_calls.txt").read_text() == "1"
    tables, _ = aggregate_grid(cfg, plan)
    frame = tables.results
    assert (frame["d8.accuracy"] - frame["accuracy"]).round(6).eq(0.005).all()
    # `where`: only the 48x48 runs have the second extra evaluation
    assert frame.loc[frame["resolution"] == "48x48", "low.accuracy"].notna().all()
    assert frame.loc[frame["resolution"] == "64x64", "low.accuracy"].isna().all()
    bad = make_grid(tmp_path, evaluate={"split": "test", "extra_evaluations": [
        {"name": "x", "where": {"resolution": ["32x32"]}}]})
    with pytest.raises(ConfigError, match="names no level"):
        load_grid(bad)
