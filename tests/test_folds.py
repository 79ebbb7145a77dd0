"""Cross-validation folds (#30): `default_split(fold=)`, population members on different folds, and
the bagged ensemble chosen by cross-validation (`neuralnets.training.fold_ensemble`)."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from test_population import BASE, solo

from neuralnets import runs
from neuralnets.config import compose
from neuralnets.data.loaders import load
from neuralnets.data.spikedata import default_split, n_folds
from neuralnets.errors import ConfigError, DataError
from neuralnets.eval.harness import evaluate
from neuralnets.training.ensemble import ensemble
from neuralnets.training.population import Population, train_population

KWARGS = {"n_trials": 40, "n_neurons": 12, "n_heldout": 4, "n_bins": 16, "n_fwd": 4, "seed": 0}


@pytest.mark.parametrize("n, val, test", [(75, 0.2, 0.0), (47, 0.2, 0.2), (40, 0.25, 0.1)])
def test_folds_are_disjoint_cover_the_non_test_trials_and_fold_0_is_the_default(n, val, test):
    default = default_split(n, val, test, seed=3)
    k = n_folds(n, val, test)
    splits = [default_split(n, val, test, seed=3, fold=f) for f in range(k)]
    np.testing.assert_array_equal(splits[0], default)
    for s in splits:
        np.testing.assert_array_equal(s == "test", default == "test")  # one test set for every fold
        assert (s == "val").sum() == (default == "val").sum()
    held = np.concatenate([np.flatnonzero(s == "val") for s in splits])
    assert len(set(held.tolist())) == len(held)  # disjoint
    assert len(held) == k * round(val * n) > (default != "test").sum() - round(val * n)  # all but a remainder
    with pytest.raises(DataError, match=rf"fold={k}: expected 0..{k - 1}"):
        default_split(n, val, test, seed=3, fold=k)


def test_a_loader_takes_the_fold_and_keeps_its_test_trials():
    a, b = load("lorenz", **KWARGS), load("lorenz", **KWARGS, fold=2)
    np.testing.assert_array_equal(a.spikes, b.spikes)
    np.testing.assert_array_equal(a.split == "test", b.split == "test")
    assert not ((a.split == "val") & (b.split == "val")).any()


FOLD_MEMBERS = [["seed=0", f"+data.load_kwargs.fold={f}"] for f in (0, 1, 3)]


def test_population_members_on_different_folds_match_their_solo_runs(tmp_path):
    cfgs = [compose([*BASE, "trainer.max_epochs=3", *m]) for m in FOLD_MEMBERS]
    records = train_population(cfgs, tmp_path / "pop")
    vals = [r["val_metrics"]["co_bps"] for r in records]
    assert len(set(vals)) == 3  # three different validation sets
    for k, cfg in enumerate(cfgs):
        _, result = solo(cfg, tmp_path, f"solo{k}")
        assert abs(vals[k] - result.record["val_metrics"]["co_bps"]) < 0.002, k
        assert records[k]["data_kwargs"]["fold"] == (0, 1, 3)[k]


def test_members_whose_data_differs_beyond_the_fold_are_refused():
    cfgs = [compose([*BASE, "+data.load_kwargs.fold=1"]), compose([*BASE, "data.load_kwargs.n_trials=48"])]
    with pytest.raises(ConfigError, match="members may differ only in data.load_kwargs.fold"):
        Population(cfgs)


# ----- the bagged ensemble: configurations ranked and k chosen by cross-validation
@pytest.fixture(scope="module")
def data():
    return load("lorenz", **KWARGS)


def _fold_run(path, data, noise: float, fold: int, rng_seed: int):
    """A finished run of configuration `noise` on `fold`: true rates times mean-1 log-normal noise."""
    rng = np.random.default_rng(rng_seed)
    rates = data.rates * np.exp(noise * rng.standard_normal(data.rates.shape) - noise**2 / 2)
    path.mkdir(parents=True)
    kwargs = {**KWARGS, "fold": fold}
    own = load("lorenz", **kwargs)
    runs.write_config(
        path, OmegaConf.create({"seed": 0, "module": {"noise": noise}, "data": {"load_kwargs": kwargs}})
    )
    runs.write_predictions(path, {"rates": rates.astype(np.float32)})
    extra = {"model": "Fake", "data": "lorenz", "data_source": "lorenz", "data_kwargs": kwargs,
             "val_metrics": evaluate(rates, own, "val")}  # fmt: skip
    runs.write_metrics(evaluate(rates, own, "test"), path, extra=extra)
    return path, rates


def test_fold_members_are_bagged_by_configuration_and_chosen_out_of_fold(tmp_path, data):
    k = n_folds(40, 0.2, 0.2)  # 4 folds of 8 trials
    made = {}
    for c, noise in enumerate((0.3, 3.0, 0.5)):  # configurations: good, bad, fair
        for f in range(k):
            made[c, f] = _fold_run(tmp_path / f"c{c}_f{f}", data, noise, f, rng_seed=10 * c + f)
    made["partial"] = _fold_run(tmp_path / "partial", data, 0.1, 0, rng_seed=99)  # one fold only
    record = ensemble([p for p, _ in made.values()], tmp_path / "ens")
    by_dir = {m["run_dir"]: m for m in record["members"]}
    cv = {c: by_dir[str(tmp_path / f"c{c}_f0")]["cv_co_bps"] for c in range(3)}
    assert cv[0] > cv[2] > cv[1]  # ranked by cross-validation
    assert record["k"] == 2 and record["n_members"] == 2 * k  # the bad configuration is left out
    assert {m["run_dir"] for m in record["members"] if m["chosen"]} == {
        str(tmp_path / f"c{c}_f{f}") for c in (0, 2) for f in range(k)
    }
    assert [s["run_dir"] for s in record["skipped"]] == [str(tmp_path / "partial")]  # named, not used
    assert "cross-validated" in record["k_rule"] and "cv_metrics" in record
    # test trials: every chosen member averaged; a fold's trial: the members that did not train on it
    out = runs.read_predictions(tmp_path / "ens")["rates"]
    test = data.split == "test"
    mean = np.mean([made[c, f][1] for c in (0, 2) for f in range(k)], axis=0)
    np.testing.assert_allclose(out[test], mean[test], rtol=1e-5)
    held_on_1 = load("lorenz", **KWARGS, fold=1).split == "val"
    oof = (made[0, 1][1] + made[2, 1][1]) / 2
    np.testing.assert_allclose(out[held_on_1], oof[held_on_1], rtol=1e-5)
    assert runs.read_run(tmp_path / "ens")["data_kwargs"] == KWARGS  # the data without a fold


def test_one_fold_twice_in_a_configuration_is_refused_naming_the_run(tmp_path, data):
    paths = [_fold_run(tmp_path / f"f{f}", data, 0.3, f, rng_seed=f)[0] for f in range(n_folds(40, 0.2, 0.2))]
    twice = _fold_run(tmp_path / "f1_again", data, 0.3, 1, rng_seed=7)[0]  # same settings, same fold
    with pytest.raises(DataError, match=r"f1_again.*overlap.*fold 1 twice"):
        ensemble([*paths, twice], tmp_path / "ens")
    assert not (tmp_path / "ens").exists() or not runs.holds_run(tmp_path / "ens")


def test_no_configuration_on_every_fold_is_refused(tmp_path, data):
    # configuration 0 on folds 0 and 1, configuration 1 on folds 2 and 3: neither covers the folds
    paths = [_fold_run(tmp_path / f"c{f // 2}_f{f}", data, 0.3 + f // 2, f, rng_seed=f)[0] for f in range(4)]
    with pytest.raises(DataError, match="no configuration was trained on every fold"):
        ensemble(paths, tmp_path / "ens")
