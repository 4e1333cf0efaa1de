"""Fréchet distance and KID with a pluggable feature network (torchmetrics does the statistics).

Offline there are no Inception-v3 FID weights, so the feature network is a parameter: any ``nn.Module`` mapping
images (N, C, H, W) to (N, d) with a ``num_features`` attribute. Name the metric after it ("FD-digitsCNN"), and say
"FID" only with :func:`inception_feature_net`, which wraps the standard ``inception-2015-12-05.pt`` TorchScript file
(the one clean-fid uses) for users who have it. :func:`clean_fid_folders` runs clean-fid's folder protocol with any
extractor for full-scale evaluation.

``digits_feature_net`` is a small CNN trained deterministically on the digits train split and cached; it is the
feature network of the 8x8 digits tier (common practice for MNIST-scale generative models).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import atomic_torch_save

CACHE = Path(os.environ.get("DISTILL_CACHE", Path(__file__).resolve().parents[2] / ".cache"))


def _batches(x: torch.Tensor, batch_size: int):
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


@torch.no_grad()
def extract_features(images: torch.Tensor, feature_net: nn.Module, batch_size: int = 256) -> torch.Tensor:
    feature_net.eval()
    return torch.cat([feature_net(b).double() for b in _batches(images, batch_size)])


@torch.no_grad()
def _feed(metric, real, fake, feature_net: nn.Module, batch_size: int):
    """Stream both image sets through a torchmetrics FID/KID metric in batches."""
    feature_net.eval()
    for b in _batches(real, batch_size):
        metric.update(b, real=True)
    for b in _batches(fake, batch_size):
        metric.update(b, real=False)
    return metric


def frechet_distance_gaussians(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}); the trace of the square root is the sum of the square
    roots of the eigenvalues of S1 S2 (real and non-negative for PSD S1, S2)."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    eig = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp(min=0)
    return float(((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * eig.sqrt().sum())


def frechet_distance_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    f1, f2 = f1.double(), f2.double()
    return frechet_distance_gaussians(f1.mean(0), torch.cov(f1.T), f2.mean(0), torch.cov(f2.T))


def frechet_distance(real: torch.Tensor, fake: torch.Tensor, feature_net: nn.Module, batch_size: int = 256) -> float:
    """Fréchet distance between two image sets in ``feature_net``'s feature space (torchmetrics' FID metric)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=feature_net, input_img_size=tuple(real.shape[1:]))
    return float(_feed(metric, real, fake, feature_net, batch_size).compute())


def kernel_inception_distance(
    real, fake, feature_net: nn.Module, subsets: int = 10, subset_size: int = 100, batch_size: int = 256
) -> tuple[float, float]:
    """KID (mean, std over subsets) with the cubic polynomial kernel, via torchmetrics."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    metric = KernelInceptionDistance(feature=feature_net, subsets=subsets, subset_size=size)
    mean, std = _feed(metric, real, fake, feature_net, batch_size).compute()
    return float(mean), float(std)


class DigitsCNN(nn.Module):
    """Two conv layers and a 128-d hidden layer; ``forward`` returns the hidden features, ``logits`` the classes."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, self.num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, 10)

    def forward(self, x):
        return self.body(x.float())

    def logits(self, x):
        return self.head(self.forward(x))


def _train_digits_cnn(epochs: int = 12, seed: int = 0) -> tuple[DigitsCNN, float]:
    from common.data.digits import load_digits_split

    x, y = load_digits_split("train")
    xt, yt = load_digits_split("test")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net.logits(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net.logits(xt).argmax(1) == yt).float().mean().item()
    return net, acc


def digits_feature_net(cache_dir=None, min_accuracy: float = 0.95) -> DigitsCNN:
    """The cached digits classifier (trained on first use, under a minute on 2 cores); raises if it misses min_accuracy."""
    path = Path(cache_dir or CACHE) / "digits_cnn_v1.pt"
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = DigitsCNN()
        net.load_state_dict(blob["state_dict"])
        acc = float(blob["test_accuracy"])
    else:
        net, acc = _train_digits_cnn()
        atomic_torch_save({"state_dict": net.state_dict(), "test_accuracy": acc}, path)
    if acc < min_accuracy:
        raise RuntimeError(f"digits feature net reached {acc:.3f} test accuracy < {min_accuracy}; delete {path}")
    net.test_accuracy = acc
    return net.eval().requires_grad_(False)


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 (TorchScript 'inception-2015-12-05.pt') on images in [-1, 1]; 2048-d pool features."""

    num_features = 2048

    def __init__(self, weights_dir):
        super().__init__()
        from cleanfid.inception_torchscript import InceptionV3W

        path = Path(weights_dir) / "inception-2015-12-05.pt"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: download inception-2015-12-05.pt (the clean-fid / StyleGAN FID network) into "
                f"{weights_dir}, or use a non-Inception feature network and report 'FD-<name>' instead of FID"
            )
        self.net = InceptionV3W(str(weights_dir), download=False)

    def forward(self, x):
        x = x.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = (x.clamp(-1, 1) + 1) * 127.5
        x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x)


def inception_feature_net(weights_dir) -> InceptionFeatures:
    return InceptionFeatures(weights_dir).eval()


def clean_fid_folders(dir_real, dir_fake, feature_net: nn.Module | None = None, device=None, batch_size: int = 64):
    """clean-fid's folder-vs-folder protocol; with ``feature_net`` (taking [-1, 1] images) instead of Inception."""
    from cleanfid import fid

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kw = {}
    if feature_net is not None:
        feature_net = feature_net.to(device).eval()
        kw["custom_feat_extractor"] = lambda x: feature_net(x / 127.5 - 1.0)
    return float(
        fid.compute_fid(
            str(dir_real), str(dir_fake), mode="clean", device=device, num_workers=0, batch_size=batch_size, **kw
        )
    )
