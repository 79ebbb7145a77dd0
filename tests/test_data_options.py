"""`parse_load_options`: KEY=VALUE text → loader keyword arguments (YAML values), with clear errors."""

from __future__ import annotations

import pytest

from neuralnets.data.options import parse_load_options
from neuralnets.errors import DataError


def test_values_are_yaml_scalars_and_lists():
    opts = parse_load_options(
        [
            "bin_size=0.005",
            "heldout_units=[0,3]",
            "trials_table=encoding_table",
            "window=[-0.25, 4.5e-1]",
            "heldout_column=null",
            "use_obs_intervals=false",
            "behavior=[hand_vel, 'eye pos']",
            "seed=7",
            "name='007'",
            "lr=5e-3",
            "big=1E6",
            "label=a=b",
        ]
    )
    assert opts == {
        "bin_size": 0.005,
        "heldout_units": [0, 3],
        "trials_table": "encoding_table",
        "window": [-0.25, 0.45],
        "heldout_column": None,
        "use_obs_intervals": False,
        "behavior": ["hand_vel", "eye pos"],
        "seed": 7,
        "name": "007",
        "lr": 0.005,
        "big": 1e6,
        "label": "a=b",  # only the first '=' splits
    }
    assert type(opts["seed"]) is int and type(opts["lr"]) is float
    assert parse_load_options([]) == {}
    assert parse_load_options([" bin_size = 0.01 "]) == {"bin_size": 0.01}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["bin_size"], r"load option 'bin_size' is not KEY=VALUE \(no '='\)"),
        (["=3"], r"load option '=3': '' is not an option name"),
        (["bin-size=3"], r"'bin-size' is not an option name"),
        (["bin_size="], r"load option 'bin_size=' has no value; write bin_size=null for None"),
        (["seed=1", "seed=2"], r"load option 'seed' is given twice: seed=1, then 'seed=2'"),
        (["window=[0, 1"], r"load option 'window=\[0, 1': the value is not a YAML scalar or list"),
        (["name=a: b: c"], r"load option .name=a: b: c.: the value is not a YAML scalar or list"),
        (["name=a: b"], r"load option .name=a: b.: the value must be a scalar or a list, not a mapping"),
        (
            ["opts={a: 1}"],
            r"load option 'opts=\{a: 1\}': the value must be a scalar or a list, not a mapping",
        ),
        ("bin_size=0.01", r"must be a list of 'KEY=VALUE' strings; got the string"),
        ([3], r"load option 3 must be a 'KEY=VALUE' string"),
    ],
)
def test_malformed_items_are_clear_errors(items, message):
    with pytest.raises(DataError, match=message):
        parse_load_options(items)


def test_no_python_objects_from_yaml():
    with pytest.raises(DataError, match="not a YAML scalar or list"):
        parse_load_options(["x=!!python/object/apply:os.system ['echo hi']"])
