"""Check the digits teacher per noise level: its denoising error on held-out images against a reference denoiser.

    python -m papers.dmd2.teacher_check --preset digits [--set teacher_steps=...] [--out FILE.json]

The 1-step student starts from the teacher at sigma_max = 80 and DMD2's real score queries the teacher on the whole
grid (DM range 2-98 % of the 1000 Karras levels, most of them at high sigma), while EDM's log-normal training noise
(P_mean -1.2, P_std 1.2, EDM Table 1) puts very few draws above sigma = 10. This measures, at each sigma, the mean
squared x0 error on the 360 held-out test images (fixed noise) of
- the teacher,
- the Gaussian (Wiener) denoiser with the train split's mean and covariance: the exact posterior mean of a Gaussian
  fitted to the data, which is the optimal denoiser to first order in 1/sigma^2 as sigma grows (so at high sigma a
  well-trained teacher should match it, and below it a good teacher should beat it),
- the train-set posterior (the optimal denoiser of the empirical train distribution, which memorises),
and the teacher's Heun-sampler FD-digitsCNN against the test split next to the FD of the train images themselves.
"""

from __future__ import annotations

import argparse
import json

import torch

SIGMAS = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0)


def gaussian_denoiser(x_train: torch.Tensor):
    """E[x0 | x0 + sigma eps] for x0 ~ N(mu, C) fitted to x_train: mu + C (C + sigma^2 I)^-1 (x - mu)."""
    f = x_train.flatten(1).double()
    mu = f.mean(0)
    c = torch.cov(f.T)
    evals, evecs = torch.linalg.eigh(c)

    def denoise(x, sigma: float):
        y = (x.flatten(1).double() - mu) @ evecs
        y = y * (evals.clamp_min(0) / (evals.clamp_min(0) + sigma**2))
        return (mu + y @ evecs.T).reshape(x.shape).float()

    return denoise


def empirical_denoiser(x_train: torch.Tensor):
    """Posterior mean of the empirical train distribution (softmax over train images): memorises at low sigma."""
    f = x_train.flatten(1).double()

    def denoise(x, sigma: float):
        q = x.flatten(1).double()
        logits = -torch.cdist(q, f).pow(2) / (2 * sigma**2)
        return (torch.softmax(logits, 1) @ f).reshape(x.shape).float()

    return denoise


def per_sigma_errors(teacher, x_test, x_train, sigmas=SIGMAS, seed=0) -> list[dict]:
    gauss, emp = gaussian_denoiser(x_train), empirical_denoiser(x_train)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in sigmas:
        xt = x_test + s * torch.randn(x_test.shape, generator=g)
        with torch.no_grad():
            d_t = teacher(xt, torch.full((len(xt),), s))
        mse = lambda d: ((d - x_test) ** 2).flatten(1).mean(1).mean().item()  # noqa: E731
        rows.append(
            {"sigma": s, "teacher": mse(d_t), "gaussian": mse(gauss(xt, s)), "train posterior": mse(emp(xt, s))}
        )
    return rows


def main(argv=None) -> dict:
    from common.config import parse_cli
    from common.data.digits import load_digits_split
    from common.diffusion.evaluation import TEST_SEED, digits_metrics, sample_teacher
    from common.diffusion.tasks import build
    from common.metrics.fid import digits_feature_net
    from papers.dmd2.config import PRESETS, Config

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--out", default="")
    ap.add_argument("--samples", type=int, default=1000)
    ns, rest = ap.parse_known_args(argv)
    cfg = parse_cli(Config, PRESETS, rest, description=__doc__)
    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    S = build(cfg)
    x_train, _ = load_digits_split("train")
    x_test, y_test = load_digits_split("test")
    rows = per_sigma_errors(S.teacher, x_test, x_train)
    print(f"{'sigma':>6} {'teacher':>9} {'gaussian':>9} {'train-post':>10}")
    for r in rows:
        print(f"{r['sigma']:6.2f} {r['teacher']:9.4f} {r['gaussian']:9.4f} {r['train posterior']:10.4f}")
    feat = digits_feature_net()
    g = torch.Generator().manual_seed(TEST_SEED + 20_000 + cfg.seed)  # the evaluation's teacher stream
    x_t, _, nfe = sample_teacher(cfg, S, ns.samples, g, "cpu")
    fd_teacher = digits_metrics(x_t, feat, x_test, y_test)
    fd_train = digits_metrics(x_train, feat, x_test, y_test)
    print(f"teacher Heun ({nfe} NFE) vs test: {fd_teacher}")
    print(f"train images vs test: {fd_train}")
    out = {
        "teacher_path": S.extra["teacher_path"],
        "teacher_steps": cfg.teacher_steps,
        "per_sigma_mse": rows,
        "teacher_samples_vs_test": fd_teacher,
        "train_images_vs_test": fd_train,
        "samples": ns.samples,
    }
    if ns.out:
        with open(ns.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
