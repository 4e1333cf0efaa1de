"""TDM evaluation: the student at K in eval_ks and the teacher at its step counts, with one sampler; records, plots.

    python -m papers.tdm.eval --preset toy2d      # re-evaluate the finished run folder of the preset

Student and teacher are sampled by the same deterministic DDIM over t_j = total - 1 - j * total / N (N = K for the
student, N in teacher_steps_eval for the teacher), from the same test noise, so "teacher at 4 steps" differs from
the student only by the network. toy2d metrics: sliced Wasserstein (256 projections) and RBF-MMD against fresh
samples of the true mixture, mode coverage, off-mode fraction, k-NN precision / recall (k=5). digits: Fréchet
distance on the digits classifier's features ("FD-digitsCNN", not Inception FID). Records: the student's metrics
at K = student_k, plus "SWD K=k" (digits: "FD K=k") for the other step counts; one record per teacher step count.
Throughput is samples per second of the whole sampler on this machine (batch eval_batch).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from common.launch import peak_memory_mb
from common.results import make_record, write_record
from papers.tdm.trajectory import student_sample

TEST_SEED, VAL_SEED = 777, 4242


def sample(cfg, S, net, k, n, dev, unify=False, seed=TEST_SEED):
    """n samples of `net` with the K-step deterministic sampler; test noise is the same for every network."""
    g = torch.Generator().manual_seed(seed + cfg.seed)
    xs, t0 = [], time.perf_counter()
    for i in range(0, n, cfg.eval_batch):
        m = min(cfg.eval_batch, n - i)
        z = torch.randn((m, *S.noise_shape), generator=g).to(dev)
        cond = S.sample_cond(m, g)
        xs.append(student_sample(net, S.schedule, z, k, cfg.total_steps, cond, unify).float().cpu())
    return torch.cat(xs), n / (time.perf_counter() - t0)


def quick_score(cfg, S, G, dev, n=2048) -> float:
    """Validation score at K = student_k on separate noise and reference draws (toy: SWD; digits: FD)."""
    was = G.training
    G.eval()
    x = sample(cfg, S, G, cfg.student_k, n, dev, cfg.unify, seed=VAL_SEED)[0]
    G.train(was)
    if cfg.task == "toy2d":
        from common.metrics.toy import sliced_wasserstein

        real = S.extra["data"].sample(n, torch.Generator().manual_seed(VAL_SEED + 1))
        return sliced_wasserstein(x, real, n_proj=128, seed=1)
    return _metric_fn(cfg, S, n)[0](x)["FD"]


def over_draws(cfg, S, net, k, dev, unify, fns, main):
    """(metrics, samples of draw 0, throughput of draw 0): every metric on draw 0, the main metric averaged over all
    test draws (draw r: its own noise and reference). The main metric alone keeps extra draws cheap."""
    m0, first, extra = None, None, []
    for r, fn in enumerate(fns):
        x, thr = sample(cfg, S, net, k, cfg.eval_samples, dev, unify, seed=TEST_SEED + 1000 * r)
        if r == 0:
            m0, first = fn(x), (x, thr)
        else:
            extra.append(fn(x, main_only=True)[main])
    m0[main] = statistics.fmean([m0[main], *extra])
    return m0, first[0], first[1]


def toy_metrics(x, real, mixture, main_only=False) -> dict:
    from common.metrics.prdc import precision_recall
    from common.metrics.toy import mmd_rbf, mode_stats, sliced_wasserstein

    if main_only:
        return {"SWD": sliced_wasserstein(x, real, n_proj=256, seed=0)}
    m = min(len(x), 2048)
    ms = mode_stats(x, mixture)
    pr = precision_recall(real[:m], x[:m], k=5)
    return {
        "SWD": sliced_wasserstein(x, real, n_proj=256, seed=0),
        "MMD": mmd_rbf(x[:m], real[:m]),
        "mode coverage": ms["mode_coverage"],
        "off-mode fraction": ms["off_mode_fraction"],
        "precision": pr["precision"],
        "recall": pr["recall"],
    }


def _scatter(path, real, panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, panels.items()):
        ax.scatter(real[:2000, 0], real[:2000, 1], s=1, c="lightgray")
        ax.scatter(x[:2000, 0], x[:2000, 1], s=1, c="C0")
        ax.set_title(title, fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _metric_fn(cfg, S, n, draw=0):
    """(metric function of a sample set against test draw `draw`'s reference, main metric, dataset, protocol)."""
    if cfg.task == "toy2d":
        data = S.extra["data"]
        real = data.sample(n, torch.Generator().manual_seed(TEST_SEED + 10_000 + cfg.seed + 1000 * draw))
        protocol = {
            "samples": n,
            "test draws": cfg.eval_draws,
            "averaging": "SWD: mean over the test draws (each: its own noise and reference); the rest: draw 0",
            "reference": f"{n} fresh samples of the true mixture (training draws no data)",
            "sampler": f"deterministic DDIM over t_j = {cfg.total_steps} - 1 - j*{cfg.total_steps}/N from N(0, I)",
            "SWD projections": 256,
            "MMD": "unbiased RBF, 2048 samples",
            "precision/recall": "k-NN, k=5, 2048 samples",
        }
        return (
            (lambda x, main_only=False: toy_metrics(x, real, data, main_only)),
            "SWD",
            f"ring{cfg.num_modes} r={cfg.radius} std={cfg.mode_std}",
            protocol,
        )
    from common.data.digits import load_digits_split
    from common.metrics.fid import digits_feature_net, extract_features, frechet_distance_from_features

    feat = digits_feature_net()
    ref_x, _ = load_digits_split("test")
    with torch.no_grad():
        f_real = extract_features(ref_x, feat)

    def fn(x, main_only=False):
        with torch.no_grad():
            return {"FD": frechet_distance_from_features(f_real, extract_features(x.clamp(-1, 1), feat))}

    protocol = {
        "samples": n,
        "test draws": cfg.eval_draws,
        "reference": "digits test split (360 images, never used by the teacher)",
        "feature net": "common.metrics.fid.digits_feature_net (128-d)",
        "metric": "FD-digitsCNN (not Inception FID)",
    }
    return fn, "FD", "sklearn digits 8x8", protocol


def evaluate(cfg, run, S, G, ema=(), best=None, train_wall_time_s=None) -> dict:
    """Evaluate the student at eval_ks and the teacher at teacher_steps_eval; write records and pictures."""
    if cfg.task not in ("toy2d", "digits"):
        from papers.tdm.fullscale import evaluate_fullscale

        return evaluate_fullscale(cfg, run, S, G, train_wall_time_s)
    t0 = time.time()
    dev, n = run.device, cfg.eval_samples
    fns = [_metric_fn(cfg, S, n, r)[0] for r in range(cfg.eval_draws)]
    _, main, dataset, protocol = _metric_fn(cfg, S, n)
    was = G.training
    G.eval()
    ks = sorted(set(cfg.eval_ks) | {cfg.student_k})
    stud = {k: over_draws(cfg, S, G, k, dev, cfg.unify, fns, main) for k in ks}
    G.train(was)
    teach = {k: over_draws(cfg, S, S.teacher, k, dev, False, fns, main) for k in cfg.teacher_steps_eval}
    metrics = dict(stud[cfg.student_k][0])
    for k, (m, _, _) in stud.items():
        if k != cfg.student_k:
            metrics[f"{main} K={k}"] = m[main]
    ref_n = max(cfg.teacher_steps_eval)
    thr, thr_t = stud[cfg.student_k][2], teach[ref_n][2]
    metrics[f"throughput vs teacher@{ref_n}"] = thr / thr_t
    for r, e in zip(cfg.ema_rates, ema):  # torch AveragedModel copies of the student
        metrics[f"{main} (EMA {r})"] = over_draws(cfg, S, e.module.eval(), cfg.student_k, dev, cfg.unify, fns, main)[0][
            main
        ]
    bench = cfg.benchmark or f"tdm / {cfg.preset}"
    method = cfg.method or "tdm"
    if run.is_main:
        common = dict(
            paper="tdm", preset=cfg.preset, seed=cfg.seed, benchmark=bench, dataset=dataset, protocol=protocol
        )
        rec = make_record(
            **common,
            method=method,
            metrics=metrics,
            config=cfg,
            wall_time_s=time.time() - t0 + (train_wall_time_s or 0),
            nfe=cfg.student_k,
            sampling_throughput=thr,
            peak_memory_mb=peak_memory_mb(),
            train_wall_time_s=train_wall_time_s,
            extra={
                "run_dir": str(run.dir),
                "teacher_nfe_for_throughput": ref_n,
                "teacher_throughput": thr_t,
                "best_validation": best,
            },
        )
        write_record(rec, root=cfg.results_dir)
        for k, (m, _, th) in teach.items():
            trec = make_record(
                **common,
                method=f"teacher, {k} steps",
                metrics=m,
                config=cfg,
                wall_time_s=time.time() - t0,
                nfe=k,
                sampling_throughput=th,
            )
            write_record(trec, root=cfg.results_dir, same_config=False)  # the teacher does not depend on the variant
        if cfg.task == "toy2d":
            panels = {f"teacher {k} steps": x for k, (_, x, _) in teach.items()}
            panels.update({f"{method} K={k}": x for k, (_, x, _) in stud.items()})
            _scatter(run.path("samples.png"), S.extra["data"].sample(2000, torch.Generator().manual_seed(1)), panels)
        else:
            from torchvision.utils import save_image

            for name, x in [("student", stud[cfg.student_k][1]), ("teacher", teach[ref_n][1])]:
                save_image((x[:100].clamp(-1, 1) + 1) / 2, run.path(f"samples_{name}.png"), nrow=10, padding=1)
        print(f"[tdm] {cfg.preset}/{method} seed {cfg.seed}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        print(f"[tdm] run folder {run.dir}; records under {Path(cfg.results_dir) / 'tdm' / cfg.preset}")
    return metrics


def main(argv=None):
    """Re-evaluate: rebuild the preset's networks, load the last checkpoint of its run folder, evaluate."""
    from common.checkpoint import Checkpointer
    from common.config import parse_cli
    from common.launch import start
    from papers.tdm.config import PRESETS, Config
    from papers.tdm.model import build

    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    run = start(cfg, paper="tdm")
    S = build(cfg)
    ckpt = Checkpointer(run.dir / "checkpoints", accelerator=run.accelerator)
    if ckpt.latest() is None:
        raise SystemExit(f"error: no checkpoint in {run.dir / 'checkpoints'}; run python -m papers.tdm.train first")
    payload = torch.load(ckpt.latest(), map_location="cpu", weights_only=False)
    S.student.load_state_dict(payload["objects"]["generator"])
    out = evaluate(cfg, run, S, S.student.to(run.device))
    run.finish()
    return out


if __name__ == "__main__":
    main()
