"""Settings shared by the whole test suite."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests run many small torch ops, which extra threads only slow down on a busy 2-core machine
    (training uses one thread for the same reason, see benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
