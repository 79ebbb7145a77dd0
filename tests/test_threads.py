"""`threads: auto` (the default): one torch thread on CPU, recorded in the run's config; torch's own
default with an accelerator; a number as given."""

from __future__ import annotations

import pytest
import torch

from neuralnets.config import compose
from neuralnets.training.build import resolve_threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_is_the_default_and_means_one_thread_on_cpu(keep_threads):
    cfg = compose(["trainer=cpu"])
    assert cfg.threads == "auto"
    torch.set_num_threads(2)
    assert resolve_threads(cfg) == 1
    assert torch.get_num_threads() == 1 and cfg.threads == 1  # the run's config.yaml says 1


def test_auto_leaves_torch_alone_with_an_accelerator_and_a_number_is_used(keep_threads):
    torch.set_num_threads(2)
    cfg = compose(["trainer=gpu"])
    assert resolve_threads(cfg) is None and cfg.threads is None and torch.get_num_threads() == 2
    cfg = compose(["threads=3"])
    assert resolve_threads(cfg) == 3 and torch.get_num_threads() == 3
