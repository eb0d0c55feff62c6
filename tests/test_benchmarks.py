"""Every script under benchmarks/ still runs, cut to its smallest work (no test ran them, and four had broken).

The figures they print are timings and are not checked; a line that shows the script reached its end is."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

RUNS = {  # script: (arguments, a line the script prints at its end)
    "example_throughput.py": (["--samples", "131072", "--block", "65536", "--nproc", "2"], "torchrun x2 (gloo)"),
    "pangu_attention.py": (["--rounds", "1", "--reps", "1", "--batch", "1", "--seq", "64"], "GFLOP per layer"),
    "pangu_cpu_linear.py": (["--blocks", "1", "--steps", "1"], "trainer side by side"),
    "pangu_allocator.py": (["--blocks", "1", "--steps", "1"], "tokens/s kept / fresh"),
    "pangu_optimizer.py": (["--blocks", "1", "--steps", "1"], "fused / loop block by block"),
    "pangu_throughput.py": (["--steps", "1", "--profile"], "MFU"),
    "colormap_seeds.py": (["--seeds", "0", "1", "--set", "n_train=120", "--set", "n_test=24", "--set", "steps=5",
                           "--set", "workers=1"], "claims, paired over these seeds"),
    "layout_transfer_scaling.py": (["--sizes", "200"], "graphwave"),
    "iwls_full.py": (["--jobs", "1", "--functions", "comparator-8", "--source", "generated"],
                     "ABC's &ps / &mltest agree"),
    "gpu_smoke.py": (["--cpu", "--chapters", "example"], "example: ok"),
}


def test_every_script_is_listed():
    assert {p.name for p in BENCH.glob("*.py")} == set(RUNS)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_the_script_runs_small(script, tmp_path):
    args, last = RUNS[script]
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, cwd=tmp_path,
                       env=ENV, timeout=600)
    assert r.returncode == 0, (r.stdout[-1000:], r.stderr[-2000:])
    assert last in r.stdout, r.stdout[-2000:]


def test_gpu_smoke_reports_a_chapter_without_the_preset_as_skipped(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "gpu_smoke.py"), "--cpu", "--chapters", "layout-transfer"],
                       capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("layout-transfer "))
    assert row.split()[1] == "skipped" and "no preset 'gpu-1'" in row


def test_profile_groups_count_an_op_for_its_nearest_enclosing_group(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from pangu_throughput import time_by_group

    class Ev:
        def __init__(self, name, us, parent=None):
            self.name, self.self_cpu_time_total, self.cpu_parent = name, us, parent

    step = Ev("Optimizer.step#AdamW.step", 10)  # the Python of a foreach step
    linear = Ev("aten::linear", 5)
    sdpa = Ev("aten::scaled_dot_product_attention", 20)
    events = [step, Ev("aten::_foreach_mul_", 20, step), Ev("aten::mul_", 30, Ev("aten::_foreach_mul_", 0, step)),
              linear, Ev("aten::addmm", 300, linear), Ev("aten::t", 5, linear), sdpa, Ev("aten::copy_", 10, sdpa),
              Ev("aten::mm", 50, step), Ev("aten::copy_", 40), Ev("aten::native_layer_norm", 10)]
    shares = {g: round(v * 500, 6) for g, v in time_by_group(events).items() if v}
    assert shares == {"optimizer": 60, "matmuls": 350, "attention (SDPA)": 30, "layer norm": 10, "other": 50}
