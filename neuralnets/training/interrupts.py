"""SIGTERM/SIGINT during a run: noted by a Lightning callback so that the lifecycle (`training.run`)
records the run as interrupted (resumable) rather than failed."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException


class _Interrupts(pl.Callback):
    """Knows whether the run was stopped by SIGTERM/SIGINT (Ctrl-C): Lightning turns both into other
    exceptions (SystemExit) by the time `trainer.fit` returns. Outside `trainer.fit` a SIGTERM raises
    KeyboardInterrupt (Lightning handles it inside fit: it stops at the next batch and the checkpoint
    callback saves last.ckpt; its handler calls this one too, which then only takes note)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.in_fit = False

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and self.signal is None:
            self.signal = "SIGTERM" if isinstance(exception, SIGTERMException) else "SIGINT"

    def _handler(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        if not self.in_fit:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        """SIGTERM handled while the block runs (main thread only: e.g. not in a Ray worker thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handler)
        previous_int = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False

    def caused(self, err: BaseException) -> bool:
        return self.signal is not None or isinstance(err, KeyboardInterrupt | SIGTERMException)
