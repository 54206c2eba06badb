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
