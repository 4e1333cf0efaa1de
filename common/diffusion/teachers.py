"""Teachers: the analytic Gaussian-mixture denoiser, small trained EDM denoisers (cached), and save/load.

Concepts: the exact posterior mean of a Gaussian mixture (Tweedie), EDM denoising score matching with
log-normal sigma (Karras et al. 2022, Eq. 2 and Table 1). `train_teacher` trains an EDM-preconditioned
network on data only and caches it under a name that includes a hash of everything that defines it, so a
second run reuses it; `load_small_denoiser` rebuilds a saved MLP or UNet denoiser from its folder
(safetensors + JSON config) and fails with a clear message when the folder is missing or does not match.
Left out: EMA of the teacher during training (the small teachers train in minutes), diffusers pipelines
(built by the papers' full-scale code through diffusers directly).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from common.config import UserInputError
from common.diffusion.denoisers import MLPDenoiser, UNetDenoiser, freeze
from common.diffusion.schedules import bcast, edm_loss_weight, lognormal_sigma

__all__ = ["AnalyticTeacher", "train_teacher", "save_small_denoiser", "load_small_denoiser", "TeacherError"]


class TeacherError(UserInputError):
    """A teacher checkpoint is missing or does not match what the preset asks for."""


class AnalyticTeacher(nn.Module):
    """Exact denoiser E[x0 | x_t] of a GaussianMixture, same API as the networks.

    VE / EDM (schedule None or EDM): t is sigma, x_t = x0 + sigma eps. VP: t is the grid index of `schedule`,
    x_t = alpha x0 + sigma eps, which is the VE problem at x_t / alpha with sigma / alpha (same posterior).
    Class-conditional (num_classes > 0): component k belongs to class k % num_classes; a label restricts the
    posterior to its class's components, a negative label (the null class of CFG) keeps all of them."""

    def __init__(self, mixture, schedule=None, num_classes: int = 0):
        super().__init__()
        self.mixture, self.schedule, self.num_classes = mixture, schedule, num_classes

    def forward(self, x, t, cond=None, return_features=False):
        if return_features:
            raise TeacherError("the analytic teacher has no features; put GAN heads on the fake score")
        if self.schedule is not None and self.schedule.kind == "vp":
            a, s = self.schedule.alpha_sigma(torch.as_tensor(t, device=x.device).long().expand(x.shape[0]))
            a, s = a.double(), s.double()
            return self._denoise(x.double() / a[:, None], s / a, cond).to(x.dtype)
        sigma = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        return self._denoise(x, sigma, cond)

    def _denoise(self, x, sigma, labels):
        if labels is None or not self.num_classes:
            return self.mixture.denoise(x, sigma)
        mix = self.mixture
        lc, var = mix._log_components(x, sigma)
        cls = torch.arange(mix.num_modes, device=x.device) % self.num_classes
        labels = torch.as_tensor(labels, device=x.device).long()
        keep = (cls[None] == labels[:, None]) | (labels[:, None] < 0)
        r = torch.softmax(lc.masked_fill(~keep, float("-inf")), dim=1)
        s2 = mix.stds[None, :, None] ** 2
        sig2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1) ** 2
        post = (s2 * x.to(torch.float64)[:, None] + sig2 * mix.means[None]) / (s2 + sig2)
        return (r[..., None] * post).sum(1).to(x.dtype)


def _save_dir_atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        write(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_small_denoiser(net: nn.Module, path, meta: dict | None = None) -> Path:
    """Write an MLPDenoiser or UNetDenoiser as a folder: weights (safetensors) + config.json that rebuilds it."""
    from safetensors.torch import save_file

    def write(tmp: Path):
        if isinstance(net, MLPDenoiser):
            cfg = {"kind": "mlp", **net.config()}
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
        elif isinstance(net, UNetDenoiser):
            cfg = {"kind": "unet", "sigma_data": net.sigma_data}
            net.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        else:
            raise TypeError(f"cannot save {type(net).__name__}")
        (tmp / "config.json").write_text(json.dumps({**cfg, "meta": meta or {}}, indent=2))

    _save_dir_atomic(Path(path), write)
    return Path(path)


def load_small_denoiser(path, expect: dict | None = None) -> nn.Module:
    """Rebuild a denoiser saved by save_small_denoiser; `expect` keys must match its config (clear error if not)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise TeacherError(f"teacher checkpoint {path} does not exist (no {cfg_file.name}); train it first")
    cfg = json.loads(cfg_file.read_text())
    for k, v in (expect or {}).items():
        got = cfg.get(k, cfg.get("meta", {}).get(k))
        if got != v:
            raise TeacherError(f"teacher checkpoint {path} does not match the preset: {k}={got!r}, expected {v!r}")
    if cfg["kind"] == "mlp":
        from safetensors.torch import load_file

        keys = ("dim", "width", "depth", "sigma_data", "emb", "num_classes")
        net = MLPDenoiser(**{k: cfg[k] for k in keys if k in cfg})
        missing, unexpected = net.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
        if missing or unexpected:
            raise TeacherError(f"teacher checkpoint {path}: missing keys {missing}, unexpected keys {unexpected}")
        return net
    if cfg["kind"] == "unet":
        from diffusers import UNet2DModel

        return UNetDenoiser(UNet2DModel.from_pretrained(path / "unet"), sigma_data=cfg["sigma_data"])
    raise TeacherError(f"teacher checkpoint {path}: unknown kind {cfg['kind']!r}")


def config_hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def train_teacher(
    net: nn.Module,
    sample_data,
    *,
    cache_dir,
    name: str,
    spec: dict,
    steps: int = 2000,
    batch: int = 256,
    lr: float = 1e-3,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    seed: int = 0,
    progress=None,
    log=None,
) -> tuple[nn.Module, Path]:
    """Train an EDM denoiser by DSM on data (EDM Eq. 2, lambda(sigma) weighting) or load it from the cache.

    sample_data(n, generator) -> (x0, cond or None). The cache folder is <cache_dir>/<name>-<hash(spec)>; spec
    must describe everything that defines the teacher (architecture, data, steps, seed). Returns (frozen net, path).
    """
    spec = {**spec, "steps": steps, "batch": batch, "lr": lr, "p_mean": p_mean, "p_std": p_std, "seed": seed}
    path = Path(cache_dir) / f"{name}-{config_hash(spec)}"
    if (path / "config.json").is_file():
        return freeze(load_small_denoiser(path)), path
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * (1 - s / max(steps, 1)) + 1e-3)
    it = range(steps) if progress is None else progress(range(steps), total=steps, desc=f"teacher {name}")
    sd = net.sigma_data
    for step in it:
        x0, cond = sample_data(batch, g)
        sigma = lognormal_sigma(x0.shape[0], p_mean, p_std, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        pred = net(x0 + bcast(sigma, x0) * noise, sigma, cond)
        loss = (edm_loss_weight(sigma, sd) * ((pred - x0) ** 2).flatten(1).mean(1)).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher training: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None and step % 100 == 0:
            log(step, teacher_loss=loss.item())
    save_small_denoiser(net, path, meta=spec)
    return freeze(net), path
