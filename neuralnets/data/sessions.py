"""Several recording sessions of one system: `MultiSessionData` and its `MultiSessionSpec`.

Sessions share the time axis (bin size, observed bins `T_obs`, forward bins `T_fwd`) but may differ
in neurons (held-in and held-out counts) and trials; each is a whole `SpikeData` with its own
NLB-style split. A stitched model (`neuralnets.models.stitched`) reads each session through its own
read-in and read-out around one shared core. Session names are part of the spec (saved in
checkpoints) and identify a session's read-in / read-out, so they must be unique.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from neuralnets.data.spikedata import DataSpec, SpikeData
from neuralnets.errors import DataError

# A session name: a word of letters, digits, '_' and '-' (it becomes part of logged metric names).
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
SHARED_FIELDS = ("bin_size", "n_fwd_bins", "n_obs_bins")  # what every session must agree on


@dataclass(frozen=True)
class MultiSessionSpec:
    """The shapes a stitched model must agree with: one `DataSpec` per named session, in order
    (a session's position is its index in batches). Saved inside checkpoints like a `DataSpec`."""

    names: tuple[str, ...]
    specs: tuple[DataSpec, ...]

    def __post_init__(self) -> None:
        check_session_specs(dict(zip(self.names, self.specs, strict=True)), "spec")

    @property
    def n_sessions(self) -> int:
        return len(self.names)

    @property
    def n_obs_bins(self) -> int:
        return self.specs[0].n_obs_bins

    @property
    def n_fwd_bins(self) -> int:
        return self.specs[0].n_fwd_bins

    @property
    def n_bins(self) -> int:
        return self.specs[0].n_bins

    @property
    def bin_size(self) -> float:
        return self.specs[0].bin_size

    def index(self, session: int | str) -> int:
        """The position of a session given by name or index; a ValueError names the valid ones."""
        if isinstance(session, str):
            if session not in self.names:
                raise DataError(f"unknown session {session!r}; sessions: {list(self.names)}")
            return self.names.index(session)
        if isinstance(session, bool) or not isinstance(session, int | np.integer):
            raise DataError(f"session must be a name or an index; got {session!r}")
        if not 0 <= session < self.n_sessions:
            raise DataError(f"session index {session} out of range; sessions: {list(self.names)}")
        return int(session)

    def __getitem__(self, session: int | str) -> DataSpec:
        return self.specs[self.index(session)]

    def with_sessions(self, other: MultiSessionSpec) -> MultiSessionSpec:
        """This spec with `other`'s sessions appended (names must be new)."""
        clash = sorted(set(self.names) & set(other.names))
        if clash:
            raise DataError(f"session name(s) {clash} already in {list(self.names)}; rename the new ones")
        return MultiSessionSpec(self.names + other.names, self.specs + other.specs)

    def to_dict(self) -> dict:
        return {"sessions": {n: s.to_dict() for n, s in zip(self.names, self.specs, strict=True)}}


def spec_from_dict(spec: Mapping) -> DataSpec | MultiSessionSpec:
    """A saved spec (`DataSpec.to_dict()` or `MultiSessionSpec.to_dict()`) as the object again."""
    if isinstance(spec, DataSpec | MultiSessionSpec):
        return spec
    if "sessions" in spec:
        sessions = dict(spec["sessions"])
        if not sessions:
            raise DataError("spec.sessions is empty; a multi-session spec needs at least one session")
        return MultiSessionSpec(tuple(sessions), tuple(DataSpec(**dict(s)) for s in sessions.values()))
    return DataSpec(**spec)


def check_session_specs(specs: Mapping[str, DataSpec], source: str) -> None:
    """DataError naming the session and field unless the names are valid and unique and every
    session shares bin size, observed and forward bins with the first."""
    if not specs:
        raise DataError(f"{source}: no sessions; give at least one")
    for name in specs:
        if not isinstance(name, str) or not _NAME.match(name):
            raise DataError(
                f"{source}: session name {name!r} must be a non-empty word of letters, digits, '_' or '-'"
            )
    first, ref = next(iter(specs.items()))
    for name, spec in specs.items():
        for fld in SHARED_FIELDS:
            a, b = getattr(spec, fld), getattr(ref, fld)
            if a != b:
                raise DataError(
                    f"{source}: session {name!r} has {fld}={a}, but session {first!r} has {fld}={b}; "
                    f"all sessions must share {', '.join(SHARED_FIELDS)}"
                )


class MultiSessionData:
    """Named `SpikeData` sessions of one system (see the module docstring).

    `sessions`: {name: SpikeData} (order kept: a session's position is its index in batches).
    """

    def __init__(
        self,
        sessions: Mapping[str, SpikeData],
        name: str = "sessions",
        source: str = "<memory>",
        meta: dict | None = None,
    ):
        self.name, self.source, self.meta = name, source, dict(meta or {})
        if not isinstance(sessions, Mapping):
            raise DataError(f"{source}: sessions must be a mapping {{name: SpikeData}}; got {type(sessions)}")
        for key, value in sessions.items():
            if not isinstance(value, SpikeData):
                raise DataError(f"{source}: session {key!r} is a {type(value).__name__}, not a SpikeData")
        self.sessions: dict[str, SpikeData] = dict(sessions)
        check_session_specs({k: v.spec for k, v in self.sessions.items()}, source)
        for key, value in self.sessions.items():
            for split in ("train", "val"):
                if value.indices(split).size == 0:
                    raise DataError(
                        f"{source}: session {key!r} has no {split!r} trials; each session needs train and val"
                    )

    @classmethod
    def of(cls, data: SpikeData | MultiSessionData) -> MultiSessionData:
        """`data` as a MultiSessionData: a SpikeData becomes one session named by `data.name`."""
        if isinstance(data, MultiSessionData):
            return data
        return cls({data.name: data}, name=data.name, source=data.source)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.sessions)

    @property
    def n_sessions(self) -> int:
        return len(self.sessions)

    @property
    def spec(self) -> MultiSessionSpec:
        return MultiSessionSpec(self.names, tuple(s.spec for s in self.sessions.values()))

    @property
    def bin_size(self) -> float:
        return next(iter(self.sessions.values())).bin_size

    def __getitem__(self, name: str) -> SpikeData:
        if name not in self.sessions:
            raise KeyError(f"{self.source}: no session {name!r}; sessions: {list(self.names)}")
        return self.sessions[name]

    def __iter__(self):
        return iter(self.sessions.items())

    def __len__(self) -> int:
        return len(self.sessions)

    def n_trials(self, split: str = "all") -> int:
        """Trials of `split` summed over the sessions."""
        return int(sum(s.indices(split).size for s in self.sessions.values()))

    def summary(self) -> str:
        lines = [f"{self.name}: {self.n_sessions} sessions, {self.n_trials()} trials"]
        for key, value in self:
            lines.append(f"[{key}] " + value.summary().replace("\n", "\n  "))
        return "\n".join(lines)


__all__ = ["MultiSessionData", "MultiSessionSpec", "check_session_specs", "spec_from_dict"]
