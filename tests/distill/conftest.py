"""The distill tests run many small ops: one torch thread is faster than two on a shared 2-core
machine, and the setting is restored so other test folders keep theirs."""

from __future__ import annotations

import pytest
import torch



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
