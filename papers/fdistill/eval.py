"""f-distill evaluation: the student, the teacher and the initial generator; the ratio check; records and pictures.

toy2d: k-NN precision / recall (k=5, 2048 points per side), modes covered (a mode counts when it holds at least a
quarter of its expected samples within 3 component stds; common.metrics.toy.mode_stats), mode-weight TV, off-mode
fraction, sliced Wasserstein (256 projections) and RBF-MMD against fresh samples of the true mixture; the normalised
variance of h over the last 100 generator steps (paper Fig. 4). The ratio check: at fixed noise levels, the
Pearson correlation between the discriminator's logit and the exact log p_sigma(x) / q_sigma(x) on noised generator
samples, with p_sigma analytic and q_sigma the KDE of 8192 fresh generator samples (exact in the limit; least
accurate at the smallest sigma, where the samples are sparse relative to the kernel). Test samples use seeds
reserved for evaluation (never the training streams, which are seeded by the run seed).
"""

from __future__ import annotations

import statistics
import time

import torch

from common.diffusion.distill import Noised
from common.diffusion.samplers import edm_sampler, student_sample
from common.launch import peak_memory_mb
from common.results import make_record, write_record

VAL_SEED, TEST_SEED, RATIO_SEED = 4242, 777, 31337


def sample_generator(S, G, n, g, dev, batch=4096):
    xs, t0 = [], time.perf_counter()
    was = G.training
    G.eval()
    for i in range(0, n, batch):
        m = min(batch, n - i)
        z = torch.randn((m, *S.noise_shape), generator=g).to(dev)
        xs.append(student_sample(G, S.schedule, [S.schedule.max_index()], z, cond=S.sample_cond(m, g))[0].float().cpu())
    G.train(was)
    return torch.cat(xs), n / (time.perf_counter() - t0)


def sample_teacher(cfg, S, n, g, dev, batch=4096):
    xs, t0, nfe = [], time.perf_counter(), 0
    for i in range(0, n, batch):
        z = torch.randn((min(batch, n - i), *S.noise_shape), generator=g).to(dev)
        x, nfe = edm_sampler(S.teacher, z, cfg.teacher_eval_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        xs.append(x.float().cpu())
    return torch.cat(xs), n / (time.perf_counter() - t0), nfe


def toy_metrics(x, real, mixture) -> dict:
    from common.metrics.prdc import precision_recall
    from common.metrics.toy import mmd_rbf, mode_stats, sliced_wasserstein

    m = min(len(x), len(real), 2048)
    ms = mode_stats(x, mixture)
    pr = precision_recall(real[:m], x[:m], k=5)
    return {
        "recall": pr["recall"],
        "modes covered": ms["mode_coverage"] * mixture.num_modes,
        "mode coverage": ms["mode_coverage"],
        "mode weight TV": ms["mode_weight_error"],
        "precision": pr["precision"],
        "off-mode fraction": ms["off_mode_fraction"],
        "SWD": sliced_wasserstein(x, real, n_proj=256, seed=0),
        "MMD": mmd_rbf(x[:m], real[:m]),
    }


@torch.no_grad()
def ratio_check(cfg, S, step, G, dev) -> dict:
    """corr(discriminator logit, exact log p_sigma / q_sigma) per noise level, on noised generator samples; the same
    for the discriminator head as initialised ("init head"), a control for structure that needs no training."""
    from common.metrics.kde import kde_log_prob

    g = torch.Generator().manual_seed(RATIO_SEED + cfg.seed)
    n = min(2048, cfg.eval_samples)
    centres, _ = sample_generator(S, G, cfg.ratio_check_kde, g, dev)
    x0, _ = sample_generator(S, G, n, g, dev)
    grid = S.schedule.net_time(torch.arange(S.schedule.num_steps)).double()
    out = {}
    for sigma in cfg.ratio_check_sigmas:
        idx = int((grid - sigma).abs().argmin())
        s = float(grid[idx])
        x_t = x0 + s * torch.randn(x0.shape, generator=g)
        exact = S.extra["data"].log_prob(x_t.double(), s).double() - kde_log_prob(x_t, centres, s)
        noised = Noised(x_t.to(dev), torch.full((n,), idx, device=dev))
        trained_head = step.head
        for name, head in (("log r corr", trained_head), ("init head log r corr", S.extra.get("initial_head"))):
            if head is None:
                continue
            step.head = head
            logit = step.logits(noised, None, grad=False).double().cpu()
            out[f"{name} @{sigma:g}"] = float(torch.corrcoef(torch.stack([logit, exact]))[0, 1])
        step.head = trained_head
    return out


def quick_score(cfg, S, G, dev) -> float:
    """Validation score for best-checkpoint selection: SWD on samples disjoint from the test samples."""
    from common.metrics.toy import sliced_wasserstein

    x, _ = sample_generator(S, G, 2048, torch.Generator().manual_seed(VAL_SEED), dev)
    real = S.extra["data"].sample(2048, torch.Generator().manual_seed(VAL_SEED + 1))
    return sliced_wasserstein(x, real, n_proj=128, seed=1)


def _scatter(path, real, panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, panels.items()):
        ax.scatter(real[:3000, 0], real[:3000, 1], s=1, c="lightgray")
        ax.scatter(x[:3000, 0], x[:3000, 1], s=1, c="C0")
        ax.set_title(title, fontsize=8)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _h_stats(state) -> dict:
    tr = state.get("h_trace", [])[-100:]
    return {"h var (norm.)": statistics.fmean(r[1] for r in tr), "h max": max(r[2] for r in tr)} if tr else {}


def evaluate(cfg, run, S, step, initial, result) -> dict:
    """Evaluate the trained student, the teacher and the initial generator; write records and pictures."""
    if cfg.task != "toy2d":  # digits and full scale: the shared evaluation (FD on classifier features, grids, ...)
        from common.diffusion.evaluation import evaluate as evaluate_task

        return evaluate_task(
            cfg, run, S, step.G, result.state, paper="fdistill", train_wall_time_s=result.train_time_s, ema=result.ema
        )
    t0, dev, n = time.time(), run.device, cfg.eval_samples
    G = step.G
    data = S.extra["data"]
    real = data.sample(n, torch.Generator().manual_seed(TEST_SEED + 10_000 + cfg.seed))
    g = torch.Generator().manual_seed(TEST_SEED + cfg.seed)
    x, thr = sample_generator(S, G, n, g, dev)
    x_init, _ = sample_generator(S, initial, n, torch.Generator().manual_seed(TEST_SEED + cfg.seed), dev)
    x_teacher, thr_t, nfe_t = sample_teacher(cfg, S, n, torch.Generator().manual_seed(TEST_SEED + cfg.seed), dev)
    metrics = toy_metrics(x, real, data)
    metrics.update(_h_stats(result.state))
    metrics.update(ratio_check(cfg, S, step, G, dev))
    for i, e in enumerate(result.ema):
        xe, _ = sample_generator(S, e.module, n, torch.Generator().manual_seed(TEST_SEED + cfg.seed), dev)
        metrics.update({f"{k} (ema{i})": v for k, v in toy_metrics(xe, real, data).items()})
    wall = time.time() - t0
    layout = f"ring{cfg.num_modes} r={cfg.radius}" if cfg.toy_layout == "ring" else f"{cfg.toy_layout}{data.num_modes}"
    dataset = f"{layout} std={cfg.mode_std} weights={list(data.weights.numpy().round(4))}"
    protocol = {
        "samples": n,
        "reference": f"{n} fresh samples of the true mixture (reserved test seed)",
        "precision/recall": "k-NN, k=5, 2048 samples per side",
        "modes covered": "count of modes holding >= 1/4 of their expected samples within 3 stds",
        "SWD projections": 256,
        "MMD": "unbiased RBF, 2048 samples",
        "h var (norm.)": "Var(h)/E[h]^2 before batch normalisation, mean over the last 100 generator steps",
        "ratio check": f"corr(logit, log p/q), 2048 noised generator samples, KDE of {cfg.ratio_check_kde}",
        "teacher": f"analytic mixture, EDM Heun {nfe_t} NFE",
        "initial generator": f"fitted to mode {cfg.init_mode}" if cfg.init_mode >= 0 else "copy of the fake score",
    }
    bench = cfg.benchmark or f"fdistill / {cfg.preset}"
    method = cfg.method or cfg.divergence
    base = dict(paper="fdistill", preset=cfg.preset, seed=cfg.seed, benchmark=bench, dataset=dataset, config=cfg)
    if run.is_main:
        extra = {
            "divergence": cfg.divergence,
            "disc_features": cfg.disc_features,
            "w_g_effective": result.state.get("w_g"),
            "ratio_bin_mean": result.state.get("ratio_bin_mean"),
            "run_dir": str(run.dir),
        }
        rec = make_record(
            **base,
            method=method,
            metrics=metrics,
            protocol=protocol,
            wall_time_s=wall + result.train_time_s,
            nfe=1,
            sampling_throughput=thr,
            peak_memory_mb=peak_memory_mb(),
            train_wall_time_s=result.train_time_s,
            extra=extra,
        )
        write_record(rec, root=cfg.results_dir)
        tm, im = toy_metrics(x_teacher, real, data), toy_metrics(x_init, real, data)
        write_record(
            make_record(
                **base,
                method="teacher (analytic, ODE)",
                metrics=tm,
                protocol=protocol,
                wall_time_s=wall,
                nfe=nfe_t,
                sampling_throughput=thr_t,
            ),
            root=cfg.results_dir,
            same_config=False,  # the teacher does not depend on the student's config
        )
        write_record(
            make_record(**base, method="initial generator", metrics=im, protocol=protocol, wall_time_s=wall, nfe=1),
            root=cfg.results_dir,
            same_config=False,  # the skewed start depends on the seed and the set-up, not on the divergence
        )
        _scatter(
            run.path("samples.png"),
            real,
            {
                f"initial ({im['modes covered']:.0f} modes)": x_init,
                f"{method} 1 NFE ({metrics['modes covered']:.0f} modes, recall {metrics['recall']:.2f})": x,
                f"teacher ODE {nfe_t} NFE": x_teacher,
            },
        )
        keys = ("recall", "modes covered", "mode weight TV", "precision", "SWD", "h var (norm.)")
        print(
            f"[fdistill] {cfg.preset}/{method} seed {cfg.seed}: "
            + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
        )
        print(
            "[fdistill] ratio check: "
            + ", ".join(f"{k[12:]}:{v:.2f}" for k, v in metrics.items() if k.startswith("log r"))
        )
        print(
            f"[fdistill] teacher modes {tm['modes covered']:.0f}, initial modes {im['modes covered']:.0f}; run {run.dir}"
        )
    return metrics
