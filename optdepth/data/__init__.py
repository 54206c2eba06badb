"""Data: Fashion-MNIST splits in memory, ImageFolder splits on disk, one batch interface."""

from optdepth.data.fashion_mnist import FashionMNIST, load_fashion_mnist, read_idx
from optdepth.data.loader import Split, iterate_batches, num_batches, random_crop_flip
from optdepth.data.source import (
    DATASETS,
    BatchSource,
    SplitDataset,
    load_dataset,
    load_run_dataset,
)

__all__ = ["DATASETS", "BatchSource", "FashionMNIST", "Split", "SplitDataset", "iterate_batches",
           "load_dataset", "load_fashion_mnist", "load_run_dataset", "num_batches",
           "random_crop_flip", "read_idx"]
