"""scikit-learn's 8x8 handwritten digits (1797 images, 16 grey levels): the CPU image tier.

The split is deterministic (stratified, 20 % test, fixed seed) so every paper evaluates on the same held-out images.
Images are scaled from [0, 16] to [-1, 1] and shaped (N, 1, 8, 8).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.cache
def _split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    train, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=d.target)
    return d.images.astype(np.float32), d.target.astype(np.int64), np.sort(train), np.sort(test)


def load_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (N, 1, 8, 8) in [-1, 1], labels int64 (N,)) of the 'train' (1437) or 'test' (360) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels, train, test = _split()
    idx = train if split == "train" else test
    x = torch.from_numpy(images[idx] / 8.0 - 1.0).unsqueeze(1)
    return x, torch.from_numpy(labels[idx])
