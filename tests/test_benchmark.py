"""`experiments/benchmark.py` runs end to end (one tiny timed step; no timing is asserted) and its
plain and fast LFADS paths train the same model: on CPU they consume the same random numbers, so
their validation scores and last losses agree up to float rounding."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "experiments" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_and_paths_agree(benchmark, tmp_path):
    out = tmp_path / "bench.md"
    args = ["--device", "cpu", "--models", "lfads", "--steps", "2", "--repeats", "1", "--warmup", "1"]
    report = benchmark.main([*args, "--trials", "500", "--threads", "1", "--out", str(out)])
    assert out.read_text() == report
    rows = [line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| lfads")]
    assert [r[1].strip() for r in rows] == ["plain", "fast"]
    plain, fast = ({"co": float(r[5]), "fp": float(r[6]), "loss": float(r[7])} for r in rows)
    assert fast["co"] == pytest.approx(plain["co"], abs=2e-4)
    assert fast["fp"] == pytest.approx(plain["fp"], abs=2e-4)
    assert fast["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    assert rows[0][-1].strip() == "1.00x"


def test_graphed_step_lives_with_the_benchmark_and_refuses_cpu_tensors(benchmark):
    import torch

    import neuralnets.nn.fast as fast

    assert not hasattr(fast, "GraphedStep")  # not part of the package: only the benchmark uses it
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        benchmark.GraphedStep(lambda b: model(b["x"]).sum(), opt, {"x": torch.zeros(3, 2)})


@pytest.fixture(scope="module")
def e2e():
    spec = importlib.util.spec_from_file_location("benchmark_e2e", ROOT / "experiments" / "benchmark_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_e2e_books_nested_phases_once(e2e):
    """The phase accounting on a scripted clock: a phase inside another (a data load inside fit, the harness
    inside validation) is booked to itself only, so no phase is negative and they add up to the wall time;
    a wrapped call inside one of its `inside` phases stays with that phase."""
    now = [100.0]
    rec = e2e._Recorder(spawned_at=100.0, clock=lambda: now[0])

    def tick(seconds):
        now[0] += seconds

    def load():
        tick(2)

    data = rec.timed("data", load, inside=("baselines",))
    tick(3)  # startup
    rec.replace("setup")
    tick(1)
    data()
    rec.push("fit other")
    tick(0.5)
    data()  # e.g. the DataModule's setup inside trainer.fit
    rec.push("training")
    tick(4)
    rec.pop()
    rec.push("validation")
    tick(1)
    rec.timed("harness in training", lambda: tick(3))()
    tick(1)
    rec.pop()
    tick(0.25)
    rec.pop()
    rec.replace("other")
    tick(0.125)
    rec.push("final harness")
    tick(5)
    rec.pop()
    rec.replace("baselines")
    data()  # the baseline rows reload the dataset: theirs
    tick(1)
    wall = rec.end()
    assert wall == 25.875 == now[0] - 100.0
    assert rec.seconds == {
        "startup": 3, "data": 4, "setup": 1, "training": 4, "validation": 2, "harness in training": 3,
        "fit other": 0.75, "final harness": 5, "other": 0.125, "baselines": 3,
    }  # fmt: skip
    assert set(rec.seconds) == set(e2e.PHASES) == set(e2e.PHASE_INFO)


def test_benchmark_e2e_times_every_phase_of_a_real_run(tmp_path, e2e):
    """The end-to-end benchmark runs `neuralnets-train` in a child process and observes it from outside:
    every phase gets a time, none is negative, they add up to the run's wall time, and the run's own scores
    come back."""
    from neuralnets.data.formats.npz import save_npz
    from neuralnets.data.synthetic import lorenz

    data = save_npz(lorenz(n_trials=40, seed=0), tmp_path / "tiny.npz")
    with pytest.raises(SystemExit):  # a folder without a neuralnets checkout is refused up front
        e2e.main(["--config", f"x={tmp_path}"])
    out = tmp_path / "e2e.md"
    args = ["--epochs", "2", "--repeats", "1", "--data", str(data), "--peak-seconds", "0.01"]
    report = e2e.main([*args, "--config", f"here={ROOT}:threads=1", "--out", str(out)])
    assert out.read_text() == report
    table = [line.split("|") for line in report.splitlines() if line.startswith("|")]
    rows = {cells[1].strip(): cells[2:-1] for cells in table}
    assert set(e2e.PHASES) <= set(rows)
    for phase in ("startup", "data", "training", "validation", "final harness", "baselines"):
        assert float(rows[phase][0]) > 0, phase
    assert all(float(rows[p][0]) >= 0 for p in e2e.PHASES)
    assert all(rows[p][-1].strip() == e2e.PHASE_INFO[p] for p in e2e.PHASES)  # the table says what is in it
    wall = float(rows["**whole run**"][0].strip(" *"))
    assert sum(float(rows[p][0]) for p in e2e.PHASES) == pytest.approx(wall, abs=0.06)  # rounded to 0.01/0.1
    shares = sum(float(rows[p][1].strip(" %")) for p in e2e.PHASES)
    assert abs(shares - 100) <= len(e2e.PHASES)  # rounded shares of the whole run
    assert "MFLOP" in report and "GFLOP/s" in report and "AVX512F" in report
