"""The `paperbook` command: list, run, plan, batch, and bad arguments."""

import json

import pytest

from helpers import cli


def test_list():
    r = cli("list")
    assert r.returncode == 0, r.stderr
    assert "example" in r.stdout and "cpu-toy" in r.stdout and "node-8" in r.stdout


def test_run_writes_metrics_and_prints_table(tmp_path):
    r = cli("run", "example", "--set", "repeats=50", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert rec["config"]["repeats"] == 50 and rec["environment"]["preset"] == "cpu-toy"
    assert len(rec["reproduction"]) == 4
    assert "holds" in r.stdout and "RMS error" in r.stdout


def test_plan_prints_launch_lines():
    r = cli("plan", "example", "--preset", "node-8")
    assert r.returncode == 0, r.stderr
    assert "world_size       8" in r.stdout
    assert "torchrun --standalone --nproc_per_node=8 -m paperbook.cli run example --preset node-8" in r.stdout
    r = cli("plan", "example", "--set", "nnodes=4", "--set", "nproc_per_node=8")
    assert "srun --nodes=4" in r.stdout and "--nnodes=4" in r.stdout and "world_size       32" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["run", "nope"], "unknown chapter 'nope'; allowed:"),
    (["run", "example", "--preset", "gpu-2"], "unknown preset 'gpu-2' for chapter 'example'; allowed: cpu-toy"),
    (["run", "example", "--set", "repeat=3"], "unknown override 'repeat'; allowed keys:"),
    (["run", "example", "--set", "repeats=many"], "override 'repeats' expects int, got 'many'"),
    (["run", "example", "--set", "repeats"], "--set expects key=value"),
    (["run", "example", "--set", "num_samples=1000"], "multiple of block_size"),
    (["plan", "example", "--preset", "x"], "unknown preset 'x'"),
    (["batch", "--chapters", "example", "--presets", "gpu-9"], "unknown preset 'gpu-9'"),
    (["batch", "--chapters", "example", "--seeds", "one"], "invalid int value: 'one'"),
    (["batch", "--chapters", "example", "--jobs", "0"], "--jobs must be >= 1"),
    (["batch", "--chapters", "example", "--executor", "slurm"], "sbatch"),
    (["batch", "--chapters", "example", "--executor", "mpi"], "invalid choice: 'mpi'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path, args, words):
    out = tmp_path / "out"
    r = cli(*args, "--out", out) if args[0] in ("run", "batch") else cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_batch_local_two_seeds(tmp_path):
    out = tmp_path / "runs"
    r = cli("batch", "--chapters", "example", "--presets", "cpu-toy", "--seeds", "0", "1", "--jobs", "2",
            "--set", "repeats=50", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    for seed in (0, 1):
        d = out / "example" / "cpu-toy" / f"seed{seed}"
        rec = json.loads((d / "metrics.json").read_text())
        assert rec["config"]["seed"] == seed and rec["config"]["repeats"] == 50
        assert (d / "00b_example.ipynb").is_file()
    csv = (out / "results.csv").read_text()
    assert csv.count("example,cpu-toy,") == 8  # 4 claims x 2 seeds
    md = (out / "results.md").read_text()
    assert md.startswith("| chapter | preset | claim |") and "2/2" in md
    assert "2 of 2 jobs ok" in r.stdout


def test_batch_through_submitit(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "runs"
    r = cli("batch", "--chapters", "example", "--seeds", "3", "--executor", "submitit-local",
            "--set", "repeats=20", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "example/cpu-toy/seed3/metrics.json").read_text())["config"]["seed"] == 3


def test_papermill_bad_override_fails_before_compute(root, tmp_path):
    pm = pytest.importorskip("papermill")
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(root / "nbs/00b_example.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"overrides": '{"repeat": 5}'}, cwd=str(root / "nbs"), progress_bar=False,
                            kernel_name="python3")
    assert "unknown override 'repeat'" in str(e.value)
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    ran = [c for c in nb["cells"] if c["cell_type"] == "code" and c.get("execution_count")]
    # it stops at the cell right after the parameters: no experiment cell ran
    assert ran and all("result = experiment(" not in "".join(c["source"]) for c in ran)
