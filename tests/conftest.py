import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fashion_folder(tmp_path_factory):
    from helpers import write_fashion_folder

    return write_fashion_folder(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def tiny():
    from helpers import tiny_data

    return tiny_data()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small models: on two shared cores two threads stall
    several-fold whenever anything else runs; the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
