"""LightningDataModule that keeps the whole dataset on the training device.

Spiking datasets are small next to device memory, so batches are index slices of resident tensors:
no worker processes, no host-to-device copies per step. Under DDP each rank takes an interleaved
shard of a training permutation that all ranks draw from the same seed; validation and test batches
are not sharded: every rank scores every trial (forward passes only, cheap next to training), so
epoch means synced across ranks are exact and no trial is left out.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from neuralnets.data.loaders import load
from neuralnets.data.sessions import MultiSessionData
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import DataError


def log_count_factorials(spikes: Tensor, observed: Tensor | None, chunk: int = 256) -> Tensor:
    """Per trial, the sum of `log y!` over the observed entries of `spikes (trials, T, N)` -> (trials,).

    The target-only term of the Poisson and negative-binomial likelihoods, constant over training:
    `TrainingModule._loss` adds it per batch instead of evaluating `lgamma` at every entry and step.
    Summed in float64, `chunk` trials at a time (no full-size temporary).
    """
    sums = []
    for start in range(0, spikes.shape[0], chunk):
        lg = torch.lgamma(spikes[start : start + chunk].double() + 1.0)  # (chunk, T, N)
        if observed is not None:
            lg = torch.where(observed[start : start + chunk], lg, 0.0)
        sums.append(lg.sum(dim=(1, 2)))
    return torch.cat(sums).to(spikes.dtype) if sums else spikes.new_zeros(0)


def batch_tensors(data: SpikeData, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """All trials as tensors on `device`, keyed as in the model contract (neuralnets.models.base),
    plus `log_count_factorial (trials,)` (see `log_count_factorials`)."""
    tensors = {
        "spikes": torch.as_tensor(data.spikes, device=device),  # (trials, T, N)
        "index": torch.arange(data.n_trials, device=device),  # (trials,)
    }
    if data.observed is not None:
        tensors["observed"] = torch.as_tensor(data.observed, device=device)  # (trials, T, N) bool
    tensors["log_count_factorial"] = log_count_factorials(tensors["spikes"], tensors.get("observed"))
    if data.behavior is not None:
        tensors["behavior"] = torch.as_tensor(data.behavior, device=device)  # (trials, T_obs, D)
    if data.inputs is not None:
        tensors["inputs"] = torch.as_tensor(data.inputs, device=device)  # (trials, T, U) external inputs
    return tensors


def make_batch(tensors: dict[str, Tensor], idx: Tensor, n_obs: int, n_heldin: int) -> dict[str, Tensor]:
    """Slice trials `idx` (B,) and add the model input `heldin (B, T_obs, N_in)`."""
    batch = {k: v[idx] for k, v in tensors.items()}
    batch["heldin"] = batch["spikes"][:, :n_obs, :n_heldin]
    return batch


class TrialBatches:
    """Iterable of batches over a fixed set of trials; reshuffled each pass when `shuffle`."""

    def __init__(
        self,
        tensors: dict[str, Tensor],
        trials: np.ndarray,
        batch_size: int,
        n_obs: int,
        n_heldin: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.n_obs, self.n_heldin = n_obs, n_heldin
        self.rank, self.world_size = rank, world_size
        device = tensors["spikes"].device
        self.trials = torch.as_tensor(trials, dtype=torch.long, device=device)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def per_rank(self) -> int:
        """Trials each rank sees per pass: ceil(trials / world_size)."""
        return -(-len(self.trials) // self.world_size)

    def _order(self) -> Tensor:
        order = self.trials
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).to(order.device)]
        if self.world_size == 1 or len(order) == 0:
            return order
        # Every rank must see the same number of batches, or DDP waits forever on the longest rank.
        # Rather than drop the remainder, pad with the first trials of this pass's order (as
        # torch's DistributedSampler does): every trial is used each pass, plus at most
        # world_size - 1 repeats.
        total = self.per_rank * self.world_size
        order = order.repeat(-(-total // len(order)))[:total]  # (per_rank * world_size,)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            yield make_batch(self.tensors, order[start : start + self.batch_size], self.n_obs, self.n_heldin)


class SpikeDataModule(pl.LightningDataModule):
    """Serves `SpikeData` splits as batches of device-resident tensors.

    `data` is a SpikeData, or a built-in name / file path given to `neuralnets.data.load`
    together with `load_kwargs`. `train_splits`: the splits whose trials are trained on; `("train",
    "val")` refits a chosen configuration on training and validation trials (`refit=true`), after which
    the validation batches are training trials and score nothing honest.
    """

    def __init__(
        self,
        data: SpikeData | str,
        batch_size: int = 128,
        seed: int = 0,
        load_kwargs: dict | None = None,
        train_splits: tuple[str, ...] = ("train",),
    ):
        super().__init__()
        if isinstance(data, str):
            data = load(data, **dict(load_kwargs or {}))
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1; got {batch_size}")
        self.data, self.batch_size, self.seed = data, int(batch_size), seed
        for split in ("train", "val"):
            if data.indices(split).size == 0:
                raise DataError(f"{data.source}: split {split!r} has no trials; training needs train and val")
        if not set(train_splits) <= {"train", "val"} or "train" not in train_splits:
            raise DataError(f"train_splits must be ('train',) or ('train', 'val'); got {train_splits!r}")
        self.train_splits = tuple(train_splits)
        self.tensors: dict[str, Tensor] | None = None

    def indices(self, split: str) -> np.ndarray:
        """The trials a split's batches hold: `train` is every split of `train_splits` (sorted)."""
        if split == "train":
            return np.sort(np.concatenate([self.data.indices(s) for s in self.train_splits]))
        return self.data.indices(split)

    @property
    def spec(self):
        return self.data.spec

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.tensors is None or self.tensors["spikes"].device != device:
            self.tensors = batch_tensors(self.data, device)

    def _batches(self, split: str, shuffle: bool, shard: bool = True) -> TrialBatches:
        if self.tensors is None:
            self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if split != "train" or not shard:
            # Evaluation is not sharded: each rank scores all trials, so a `sync_dist` mean over ranks
            # equals the single-process mean exactly and no trial is dropped or counted twice.
            rank, world = 0, 1
        return TrialBatches(
            self.tensors,
            self.indices(split),
            self.batch_size,
            self.data.n_obs,
            self.data.n_heldin,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )

    def train_dataloader(self) -> TrialBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> TrialBatches:
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> TrialBatches:
        return self._batches("test", shuffle=False)

    def eval_batches(self, split: str) -> TrialBatches | SessionBatches:
        """All trials of `split` in order, not sharded over DDP ranks (e.g. the training trials scored
        by sample validation at each validation epoch)."""
        return self._batches(split, shuffle=False, shard=False)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # already resident on the device


class SessionBatches:
    """Batches of several sessions, each batch from ONE session (shapes differ between sessions) with
    `batch["session"]` = that session's index (an int: `first_session` + its position). With `shuffle`,
    the sessions' batches are interleaved in a random order each pass (drawn from `seed`, the same on
    every DDP rank), so an epoch mixes sessions; otherwise session by session."""

    def __init__(self, per_session: list[TrialBatches], shuffle: bool, seed: int = 0, first_session: int = 0):
        self.per_session, self.shuffle, self.first_session = per_session, shuffle, first_session
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return sum(len(b) for b in self.per_session)

    def order(self) -> list[int]:
        """The session position of each batch of one pass."""
        order = torch.cat([torch.full((len(b),), i) for i, b in enumerate(self.per_session)])  # (batches,)
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        return order.tolist()

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        iterators = [iter(b) for b in self.per_session]
        for i in self.order():
            batch = next(iterators[i])
            batch["session"] = self.first_session + i
            yield batch


class MultiSessionDataModule(SpikeDataModule):
    """Serves a `MultiSessionData` as single-session batches, sessions mixed within each epoch
    (`SessionBatches`). `first_session`: the index of the data's first session in the model (a
    model fine-tuned on new sessions numbers them after the ones it was trained on)."""

    def __init__(self, data: MultiSessionData, batch_size: int = 128, seed: int = 0, first_session: int = 0):
        pl.LightningDataModule.__init__(self)
        if not isinstance(data, MultiSessionData):
            raise DataError(f"MultiSessionDataModule needs a MultiSessionData; got {type(data).__name__}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1; got {batch_size}")
        self.data, self.batch_size, self.seed = data, int(batch_size), seed
        self.first_session = int(first_session)
        self.train_splits = ("train",)
        self.tensors: list[dict[str, Tensor]] | None = None

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.tensors is None or self.tensors[0]["spikes"].device != device:
            self.tensors = [batch_tensors(s, device) for _, s in self.data]

    def _batches(self, split: str, shuffle: bool, shard: bool = True) -> SessionBatches:
        if self.tensors is None:
            self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if split != "train" or not shard:
            rank, world = 0, 1  # evaluation is not sharded (see SpikeDataModule._batches)
        per_session = [
            TrialBatches(
                tensors,
                s.indices(split),
                self.batch_size,
                s.n_obs,
                s.n_heldin,
                shuffle=shuffle,
                seed=self.seed + i,
                rank=rank,
                world_size=world,
            )  # fmt: skip
            for i, (tensors, (_, s)) in enumerate(zip(self.tensors, self.data, strict=True))
        ]
        return SessionBatches(per_session, shuffle=shuffle, seed=self.seed, first_session=self.first_session)
