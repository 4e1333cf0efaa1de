"""Evaluation of a distilled student for every diffusion paper: samples drawn in bounded batches, metrics, records,
sample grids and scatter plots, and the exported student (and its EMA copies).

toy2d: sliced Wasserstein (256 projections) and RBF-MMD to fresh true-data samples, mode coverage, mode-weight
TV, off-mode fraction, k-NN precision/recall (k=5), the "brightness" oscillation of the generator output.
digits: Fréchet distance on the digits classifier's features ("FD-digitsCNN", not Inception FID), precision /
recall on the same features (k=3), class-histogram TV. The teacher is sampled with EDM Heun at
2*teacher_eval_steps-1 NFE (VP: DDIM from the model's scheduler config). The best checkpoint is chosen by a
validation score on separate samples; numbers labelled "(best)" are from it, "(ema r)" from the EMA copy with rate
r, all others from the last iteration.
Full scale: samples are streamed `eval_batch` at a time and written as PNG files (samples/student, samples/teacher)
for clean-fid / the metric protocols in common/metrics; the record holds throughput, NFE and wall time.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from common.diffusion.samplers import ddim_teacher_sampler, edm_sampler, student_sample
from common.diffusion.teachers import save_small_denoiser
from common.launch import peak_memory_mb
from common.results import make_record, write_record

VAL_SEED, TEST_SEED = 4242, 777


def stream_batches(n: int, batch: int):
    """Sizes of the bounded batches that make up n samples."""
    for i in range(0, n, batch):
        yield min(batch, n - i)


def sample_student(S, G, n, g, dev, batch=4096, sink=None):
    """n student samples, `batch` per forward pass; with `sink` (a callable taking each batch) nothing is kept and
    only the first batch is returned. Returns (samples, samples per second)."""
    xs, t0 = [], time.perf_counter()
    G.eval()
    for m in stream_batches(n, batch):
        z = torch.randn((m, *S.noise_shape), generator=g).to(dev)
        cond = S.sample_cond(m, g)
        x = student_sample(G, S.schedule, S.student_steps, z, cond=cond, generator=g)[0].float()
        if sink is None or not xs:
            xs.append(x.cpu())
        if sink is not None:
            sink(x)
    G.train()
    return torch.cat(xs), n / (time.perf_counter() - t0)


def sample_teacher(cfg, S, n, g, dev, batch=4096, sink=None):
    """n teacher ODE samples (EDM Heun on the Karras grid, or DDIM for VP schedules), streamed like sample_student.
    Returns (samples, samples per second, NFE per sample)."""
    xs, t0, nfe = [], time.perf_counter(), 0
    for m in stream_batches(n, batch):
        z = torch.randn((m, *S.noise_shape), generator=g).to(dev)
        cond = S.sample_cond(m, g)
        if S.schedule.kind == "edm":
            x, nfe = edm_sampler(S.target, z, cfg.teacher_eval_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, cond=cond)
        else:
            sched = S.extra.get("scheduler")
            x, nfe = ddim_teacher_sampler(
                S.target, S.schedule, z, cfg.teacher_eval_steps, cond, sched.config if sched is not None else None
            )
            nfe *= 2 if cfg.real_guidance != 1.0 else 1
        x = x.float()
        if sink is None or not xs:
            xs.append(x.cpu())
        if sink is not None:
            sink(x)
    return torch.cat(xs), n / (time.perf_counter() - t0), nfe


# ---------------------------------------------------------------- toy2d


def toy_metrics(x, real, mixture) -> dict:
    from common.metrics.prdc import precision_recall
    from common.metrics.toy import mmd_rbf, mode_stats, sliced_wasserstein

    m = min(len(x), 2048)
    out = {"SWD": sliced_wasserstein(x, real, n_proj=256, seed=0), "MMD": mmd_rbf(x[:m], real[:m])}
    ms = mode_stats(x, mixture)
    out.update(
        {
            "mode weight TV": ms["mode_weight_error"],
            "mode coverage": ms["mode_coverage"],
            "off-mode fraction": ms["off_mode_fraction"],
        }
    )
    pr = precision_recall(real[:m], x[:m], k=5)
    out.update(precision=pr["precision"], recall=pr["recall"])
    return out


def _scatter(path, real, panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, panels.items()):
        ax.scatter(real[:2000, 0], real[:2000, 1], s=1, c="lightgray", label="data")
        ax.scatter(x[:2000, 0], x[:2000, 1], s=1, c="C0")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- digits


def _digits_ref(split: str = "test"):
    """Reference images: the held-out "test" split (360 images, never seen by the teacher or the student) for the
    reported numbers; the "train" split only for checkpoint selection during training."""
    from common.data.digits import load_digits_split

    return load_digits_split(split)


def learning_curve(run) -> list[list[float]]:
    """[generator step, validation score] pairs from the run's metrics log (the selection evaluations)."""
    path = run.dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "val_score" in r and "gen_step" in r:
            out[int(r["gen_step"])] = float(r["val_score"])
    return [[k, v] for k, v in sorted(out.items())]


def plot_learning_curve(path, curve, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], marker=".")
    ax.set_xlabel("generator step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def digits_metrics(x, feat_net, ref_x, ref_y) -> dict:
    from common.metrics.fid import extract_features, frechet_distance_from_features
    from common.metrics.prdc import precision_recall

    x = x.clamp(-1, 1)
    with torch.no_grad():
        f_fake = extract_features(x, feat_net)
        f_real = extract_features(ref_x, feat_net)
        cls = feat_net.head(f_fake.float()).argmax(1)
    hist = torch.bincount(cls, minlength=10).double() / len(cls)
    ref_hist = torch.bincount(ref_y, minlength=10).double() / len(ref_y)
    pr = precision_recall(f_real, f_fake, k=3)
    return {
        "FD-digitsCNN": frechet_distance_from_features(f_real, f_fake),
        "precision": pr["precision"],
        "recall": pr["recall"],
        "class histogram TV": 0.5 * (hist - ref_hist).abs().sum().item(),
    }


def _grid(path, x, nrow=16):
    from torchvision.utils import save_image

    save_image((x[: nrow * nrow].clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=1)


def validation_samples(cfg, S, G, dev):
    """(student samples, reference) of the validation protocol, never the test draws: toy2d 2048 samples against
    2048 fresh mixture samples, digits 500 samples against the train split ((images, labels))."""
    g = torch.Generator().manual_seed(VAL_SEED)
    if cfg.task == "toy2d":
        x, _ = sample_student(S, G, 2048, g, dev, cfg.eval_batch)
        return x, S.extra["data"].sample(2048, torch.Generator().manual_seed(VAL_SEED + 1))
    x, _ = sample_student(S, G, 500, g, dev, cfg.eval_batch)
    return x, _digits_ref("train")


def quick_score(cfg, S, G, dev) -> float:
    """Validation score for best-checkpoint selection (never the test samples)."""
    if cfg.task == "toy2d":
        from common.metrics.toy import sliced_wasserstein

        x, real = validation_samples(cfg, S, G, dev)
        return sliced_wasserstein(x, real, n_proj=128, seed=1)
    if cfg.task == "digits":
        from common.metrics.fid import digits_feature_net

        x, (ref_x, ref_y) = validation_samples(cfg, S, G, dev)
        return digits_metrics(x, digits_feature_net(), ref_x, ref_y)["FD-digitsCNN"]
    return float("nan")


def _inner(G):
    """The saved network of a student (a VP-wrapped toy MLP saves its VE MLP)."""
    from common.diffusion.denoisers import VPDenoiser

    return G.net if isinstance(G, VPDenoiser) else G


def _best_generator(run, G):
    path = run.dir / "best_generator.pt"
    if not path.exists():
        return None
    best = copy.deepcopy(G)
    best.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return best


def _oscillation(trace, last=1000) -> dict:
    if len(trace) < 2:
        return {}
    t = torch.tensor(trace[-last:], dtype=torch.float64)
    return {"oscillation (mean)": t[:, 0].std().item(), "oscillation (2nd moment)": t[:, 1].std().item()}


def evaluate(cfg, run, S, G, state, paper: str, train_wall_time_s=None, ema=()) -> dict:
    """Evaluate the trained student (last, best, and each EMA copy) and the teacher, write records and pictures;
    returns the student metrics."""
    if cfg.task not in ("toy2d", "digits"):
        return evaluate_fullscale(cfg, run, S, G, state, paper, train_wall_time_s, ema)
    t0 = time.time()
    dev = run.device
    n = cfg.eval_samples
    # One noise stream per sampled model: every student copy (last, best, EMA) sees the same latents (a paired
    # comparison) and the teacher's samples do not depend on which copies exist (eval_every, ema_rates).
    g_student = lambda: torch.Generator().manual_seed(TEST_SEED + cfg.seed)  # noqa: E731
    best = _best_generator(run, G)
    x_last, thr_student = sample_student(S, G, n, g_student(), dev, cfg.eval_batch)
    x_best = sample_student(S, best, n, g_student(), dev, cfg.eval_batch)[0] if best is not None else None
    g_teacher = torch.Generator().manual_seed(TEST_SEED + 20_000 + cfg.seed)
    x_teacher, thr_teacher, teacher_nfe = sample_teacher(cfg, S, n, g_teacher, dev, cfg.eval_batch)
    if cfg.task == "toy2d":
        data = S.extra["data"]
        real = data.sample(n, torch.Generator().manual_seed(TEST_SEED + 10_000 + cfg.seed))
        fn = lambda x: toy_metrics(x, real, data)  # noqa: E731
        dataset = (
            f"ring{cfg.num_modes} r={cfg.radius} std={cfg.mode_std}"
            if cfg.toy_layout == "ring"
            else f"{cfg.toy_layout} mixture, {data.num_modes} modes"
        )
        protocol = {
            "samples": n,
            "reference": f"{n} fresh samples of the true mixture",
            "SWD projections": 256,
            "MMD": "unbiased RBF, 2048 samples",
            "precision/recall": "k-NN, k=5, 2048 samples",
            "mode stats": "nearest mode within 3 std",
            "oscillation": "std over the last 1000 generator steps of |batch mean| and mean x^2",
            "best": "checkpoint with the lowest validation SWD "
            f"(every {cfg.eval_every} generator steps, separate samples)",
            "teacher": cfg.teacher,
        }
        if run.is_main:
            panels = {
                f"student 1-NFE last (SWD {fn(x_last)['SWD']:.3f})"
                if len(S.student_steps) == 1
                else f"student {len(S.student_steps)}-step last": x_last,
                f"teacher ({cfg.teacher}) ODE {teacher_nfe} NFE": x_teacher,
            }
            if x_best is not None:
                panels["student best"] = x_best
            _scatter(run.path("samples.png"), real, panels)
    else:
        from common.metrics.fid import digits_feature_net

        feat = digits_feature_net()
        ref_x, ref_y = _digits_ref("test")
        fn = lambda x: digits_metrics(x, feat, ref_x, ref_y)  # noqa: E731
        dataset = "sklearn digits 8x8"
        protocol = {
            "samples": n,
            "reference": "digits held-out test split (360 images; teacher and student train on the 1437 train images)",
            "feature net": "common.metrics.fid.digits_feature_net (128-d)",
            "metric": "FD-digitsCNN (not Inception FID)",
            "precision/recall": "k=3 on the same features",
            "best": "lowest validation FD (500 separate samples against the train split) during training",
        }
        if run.is_main:
            _grid(run.path("samples_student.png"), x_last)
            _grid(run.path("samples_teacher.png"), x_teacher)
    metrics = fn(x_last)
    if x_best is not None:
        metrics.update({f"{k} (best)": v for k, v in fn(x_best).items()})
    for rate, e in zip(cfg.ema_rates, ema):
        x_ema = sample_student(S, e.module, n, g_student(), dev, cfg.eval_batch)[0]
        metrics.update({f"{k} (ema {rate})": v for k, v in fn(x_ema).items()})
    metrics.update(_oscillation(state["trace"]))
    metrics["throughput vs teacher"] = thr_student / thr_teacher
    teacher_metrics = fn(x_teacher)
    wall = time.time() - t0
    bench = cfg.benchmark or f"{paper} / {cfg.preset}"
    nfe = len(S.student_steps)
    extra = {
        "w_g_effective": state["w_g"],
        "w_g_calibration": state.get("calib"),
        "best": state["best"],
        "teacher_nfe": teacher_nfe,
        "teacher_sampling_throughput": thr_teacher,
        "run_dir": str(run.dir),
        "learning_curve": learning_curve(run),  # validation score vs generator step (every eval_every updates)
    }
    if run.is_main and extra["learning_curve"]:
        ylabel = "validation SWD" if cfg.task == "toy2d" else "validation FD-digitsCNN (train split)"
        plot_learning_curve(
            run.path("learning_curve.png"), extra["learning_curve"], ylabel, f"{cfg.preset} seed {cfg.seed}"
        )
    if run.is_main:
        rec = make_record(
            paper=paper,
            preset=cfg.preset,
            method=cfg.method or paper,
            seed=cfg.seed,
            benchmark=bench,
            dataset=dataset,
            metrics=metrics,
            protocol=protocol,
            config=cfg,
            wall_time_s=wall + (train_wall_time_s or 0),
            nfe=nfe,
            sampling_throughput=thr_student,
            peak_memory_mb=peak_memory_mb(),
            train_wall_time_s=train_wall_time_s,
            extra=extra,
        )
        write_record(rec, root=cfg.results_dir)
        trec = make_record(
            paper=paper,
            preset=cfg.preset,
            method=f"teacher ({cfg.teacher}, ODE)" if cfg.task == "toy2d" else "teacher (EDM Heun)",
            seed=cfg.seed,
            benchmark=bench,
            dataset=dataset,
            metrics=teacher_metrics,
            protocol=protocol,
            config=cfg,
            wall_time_s=wall,
            nfe=teacher_nfe,
            sampling_throughput=thr_teacher,
        )
        write_record(trec, root=cfg.results_dir, same_config=False)  # the teacher does not depend on the student
        meta = {
            "task": cfg.task,
            "student_steps": S.student_steps,
            "schedule": {
                "sigma_min": cfg.sigma_min,
                "sigma_max": cfg.sigma_max,
                "rho": cfg.rho,
                "num_levels": cfg.num_levels,
            },
        }
        save_small_denoiser(_inner(G), run.path("student"), meta=meta)
        for rate, e in zip(cfg.ema_rates, ema):
            save_small_denoiser(_inner(e.module), run.path(f"student_ema{rate}"), meta={**meta, "ema_rate": rate})
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "(best)" not in k)
        print(f"[{paper}] {cfg.preset}/{cfg.method} seed {cfg.seed}: {summary}")
        print(f"[{paper}] teacher: " + ", ".join(f"{k}={v:.4g}" for k, v in teacher_metrics.items()))
        print(f"[{paper}] run folder {run.dir}; records under {Path(cfg.results_dir) / paper / cfg.preset}")
    return metrics


def evaluate_fullscale(cfg, run, S, G, state, paper: str, train_wall_time_s=None, ema=()) -> dict:
    """Stream eval_samples student (and teacher) samples in batches of eval_batch, write them as PNG files under
    samples/ for FID / CLIP protocols (common/metrics), save a grid, write the record, export the student.

    FID / CLIP score need Inception / CLIP weights that are not shipped; the record holds throughput, NFE, wall time.
    """
    from torchvision.utils import save_image

    dev, n, t_start = run.device, cfg.eval_samples, time.time()
    vae = S.extra.get("vae")

    def writer(folder):
        out, count = run.path("samples", folder, ".keep").parent, [0]

        def sink(x):
            if vae is not None:
                with torch.no_grad():
                    x = vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample.float()
            x = (x.clamp(-1, 1) + 1) / 2
            if run.is_main:
                for img in x.cpu():
                    save_image(img, out / f"{count[0]:06d}.png")
                    count[0] += 1
            if sum(len(t) for t in grid) < 64:
                grid.append(x[:64].cpu())

        return sink

    g = torch.Generator().manual_seed(TEST_SEED + cfg.seed)
    grid: list = []
    _, thr = sample_student(S, G, n, g, dev, cfg.eval_batch, sink=writer("student"))
    if run.is_main and grid:
        save_image(torch.cat(grid)[:64], run.path("samples_student.png"), nrow=8)
    grid = []
    g = torch.Generator().manual_seed(TEST_SEED + 20_000 + cfg.seed)  # the teacher's own stream, as above
    _, thr_t, t_nfe = sample_teacher(cfg, S, n, g, dev, cfg.eval_batch, sink=writer("teacher"))
    metrics = {"student img/s": thr, "teacher img/s": thr_t, "throughput vs teacher": thr / thr_t}
    if run.is_main:
        rec = make_record(
            paper=paper,
            preset=cfg.preset,
            method=cfg.method or paper,
            seed=cfg.seed,
            benchmark=cfg.benchmark or f"{paper} / {cfg.preset}",
            dataset=cfg.real_data or "random (smoke)",
            metrics=metrics,
            protocol={
                "samples": n,
                "batch": cfg.eval_batch,
                "note": "throughput only; FID/CLIP from the PNG folders under samples/ (common/metrics protocols)",
                "teacher_nfe": t_nfe,
            },
            config=cfg,
            wall_time_s=(train_wall_time_s or 0.0) + time.time() - t_start,
            nfe=len(S.student_steps),
            sampling_throughput=thr,
            peak_memory_mb=peak_memory_mb(),
            train_wall_time_s=train_wall_time_s,
            extra={"w_g_effective": state["w_g"], "teacher_nfe": t_nfe},
        )
        write_record(rec, root=cfg.results_dir)
        if "pipe" in S.extra:
            from common.diffusion.t2i import export_pipeline

            export_pipeline(S, G, run.path("pipeline"), S.student_steps)
            for rate, e in zip(cfg.ema_rates, ema):
                export_pipeline(S, e.module, run.path(f"pipeline_ema{rate}"), S.student_steps)
        else:
            save_small_denoiser(G, run.path("student"), meta={"task": cfg.task, "student_steps": S.student_steps})
            for rate, e in zip(cfg.ema_rates, ema):
                save_small_denoiser(e.module, run.path(f"student_ema{rate}"), meta={"ema_rate": rate})
        print(f"[{paper}] {cfg.preset}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    G.train()
    return metrics
