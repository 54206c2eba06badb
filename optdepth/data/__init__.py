"""Data: Fashion-MNIST splits in memory and fast tensor batching."""

from optdepth.data.fashion_mnist import FashionMNIST, Split, load_fashion_mnist, read_idx
from optdepth.data.loader import iterate_batches, num_batches, random_crop_flip

__all__ = ["FashionMNIST", "Split", "iterate_batches", "load_fashion_mnist", "num_batches",
           "random_crop_flip", "read_idx"]
