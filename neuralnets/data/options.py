"""Loader options written as text, `KEY=VALUE`, e.g. on a command line (`neuralnets-data --opt ...`).

Values are YAML scalars or lists (`yaml.safe_load`): `bin_size=0.005` → 0.005, `heldout_units=[0,3]`
→ [0, 3], `behavior=[hand_vel, eye_pos]` → ['hand_vel', 'eye_pos'], `heldout_column=null` → None,
`use_obs_intervals=false` → False, `trials_table=encoding_table` → 'encoding_table'. Quote a value to
keep it text: `name='007'`. Unlike YAML 1.1, an exponent without a dot is a number: `bin_size=5e-3`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

import yaml

from neuralnets.errors import DataError

__all__ = ["parse_load_options"]


class _OptionLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `5e-3` and `1E6` as floats (YAML 1.1 needs `5.0e-3`)."""


_OptionLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_load_options(items: Sequence[str]) -> dict:
    """`["bin_size=0.005", "heldout_units=[0,3]"]` → `{"bin_size": 0.005, "heldout_units": [0, 3]}`.

    Each item is `KEY=VALUE` with KEY a Python identifier (a loader's keyword argument) and VALUE a
    YAML scalar or list (`null` for None). A malformed item, an empty value or a key given twice is
    a `DataError` naming the item. Which keys a loader accepts is checked by `neuralnets.data.load`.
    """
    if isinstance(items, str):
        raise DataError(f"load options must be a list of 'KEY=VALUE' strings; got the string {items!r}")
    out: dict = {}
    for item in items:
        if not isinstance(item, str):
            raise DataError(f"load option {item!r} must be a 'KEY=VALUE' string")
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise DataError(f"load option {item!r} is not KEY=VALUE (no '='), e.g. bin_size=0.005")
        if not _KEY.match(key):
            raise DataError(
                f"load option {item!r}: {key!r} is not an option name (letters, digits and _), "
                "e.g. bin_size=0.005"
            )
        if not text.strip():
            raise DataError(f"load option {item!r} has no value; write {key}=null for None")
        if key in out:
            raise DataError(f"load option {key!r} is given twice: {key}={out[key]!r}, then {item!r}")
        try:
            value = yaml.load(text, Loader=_OptionLoader)  # a SafeLoader: plain data only
        except yaml.YAMLError as e:
            reason = " ".join(str(e).split())
            raise DataError(
                f"load option {item!r}: the value is not a YAML scalar or list ({reason}); quote text "
                "with spaces or special characters, e.g. name='my data'"
            ) from e
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            raise DataError(f"load option {item!r}: the value must be a scalar or a list, not a mapping")
        out[key] = value
    return out


def add_load_options_arg(parser: argparse.ArgumentParser, note: str = "") -> None:
    """Add the repeatable `-o/--opt KEY=VALUE` loader option (parsed by `parse_load_options`) to a CLI."""
    parser.add_argument(
        "-o",
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any option of the dataset loader, repeatable" + (f" ({note})" if note else "") + "; VALUE is a "
        "YAML scalar or list, e.g. -o bin_size=0.005 -o heldout_units=[0,3] -o trials_table=encoding_table "
        "-o heldout_column=null",
    )
