"""DisBack evaluation: the distance-to-data curve, its convergence measures, final quality, the path, records.

toy2d: distance = sliced Wasserstein-2 (common.metrics.toy) between generator samples and data samples. The curve
uses `curve_samples` samples from fixed noise against a fixed data sample (128 projections); the final evaluation
uses `eval_samples` fresh samples against fresh data (256 projections), MMD (2048 samples) and mode statistics.
The path check samples every node with a 25-step EDM Euler sampler and measures its distance to the data and to
G^0: node 0 (the teacher) should sit on the data and node N near G^0.
digits: distance = Fréchet distance on the digits classifier's features ("FD-digitsCNN", not Inception FID).
Full-scale presets record the curve only when a distance is configured (none offline; see README).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from common.diffusion.samplers import edm_sampler, student_sample
from common.launch import peak_memory_mb
from common.results import make_record, write_record
from papers.disback.curves import auc, plot_curves, shift_for_stage1, steps_to_threshold

CURVE_SEED, TEST_SEED = 4242, 777


@torch.no_grad()
def sample_generator(S, G, z, cond=None):
    G.eval()
    x, _ = student_sample(G, S.schedule, S.student_steps, z, cond=cond)
    G.train()
    return x.float().cpu()


class CurveProbe:
    """Distance of G's samples to the data on fixed noise and a fixed reference (the same for every run/seed)."""

    def __init__(self, cfg, S, dev):
        self.cfg, self.S, self.dev = cfg, S, dev
        g = torch.Generator().manual_seed(CURVE_SEED)
        self.z = torch.randn((cfg.curve_samples, *S.noise_shape), generator=g).to(dev)
        if cfg.task == "toy2d":
            self.ref = S.extra["data"].sample(cfg.curve_samples, torch.Generator().manual_seed(CURVE_SEED + 1))
        elif cfg.task == "digits":
            from common.metrics.fid import digits_feature_net

            self.feat = digits_feature_net()
            self.ref = S.extra["real_images"]
        else:
            self.ref = None  # full scale: no offline distance (FID needs Inception weights; see README)
        self.enabled = self.ref is not None

    def distance(self, x) -> float:
        if self.cfg.task == "toy2d":
            from common.metrics.toy import sliced_wasserstein

            return sliced_wasserstein(x, self.ref, n_proj=128, seed=1)
        if self.cfg.task == "digits":
            from common.metrics.fid import extract_features, frechet_distance_from_features

            with torch.no_grad():
                return frechet_distance_from_features(
                    extract_features(self.ref, self.feat), extract_features(x.clamp(-1, 1), self.feat)
                )
        return float("nan")

    def __call__(self, G) -> float:
        if self.ref is None:
            return 0.0
        return self.distance(sample_generator(self.S, G, self.z))


def curve_metrics(cfg, curve, stage1_steps: int) -> dict:
    """Early convergence on the generator-step axis and, with stage 1 counted, on the total-compute axis."""
    window, thr = cfg.auc_window, cfg.threshold
    offset = stage1_steps / cfg.ttur_ratio  # a stage-1 step = one critic-only iteration (papers/disback/curves.py)
    s_thr, reached = steps_to_threshold(curve, thr)
    shifted = shift_for_stage1(curve, offset)
    c_thr, c_reached = steps_to_threshold(shifted, thr)
    out = {
        f"AUC distance, first {window} gen steps": auc(curve, window),
        f"gen steps to distance <= {thr:g}": s_thr,
        "threshold reached": float(reached),
        "distance at G0": curve[0][1],
        "distance at end (curve)": curve[-1][1],
        "stage-1 cost (gen-step equivalents)": offset,
        f"gen-step equivalents to distance <= {thr:g} (stage 1 counted)": c_thr,
        "threshold reached (stage 1 counted)": float(c_reached),
    }
    if shifted[-1][0] >= window:
        out[f"AUC distance, first {window} gen-step equivalents (stage 1 counted)"] = auc(shifted, window)
    return out


def _scatter(path, real, panels):
    from common.diffusion.evaluation import _scatter as scatter  # the shared 2-D scatter panels

    scatter(path, real, panels)


@torch.no_grad()
def path_check(cfg, run, S, path, G0_samples, real) -> dict:
    """Sample every node (node 0 = teacher) and measure its distance to the data and to G^0 (toy only)."""
    from common.metrics.toy import sliced_wasserstein

    n = min(2048, len(real))
    z = torch.randn((n, *S.noise_shape), generator=torch.Generator().manual_seed(TEST_SEED + 3))
    nets = [("node 0 (teacher)", S.teacher)]
    for i in range(1, path.num_nodes + 1):
        nets.append((f"node {i}", path.load_node(i, S.make_net()).eval()))
    to_data, to_g0, panels = [], [], {}
    for name, net in nets:
        x, _ = edm_sampler(net, z, 25, cfg.sigma_min, cfg.sigma_max, cfg.rho, heun=False)
        to_data.append(sliced_wasserstein(x, real[:n], n_proj=128, seed=2))
        to_g0.append(sliced_wasserstein(x, G0_samples[:n], n_proj=128, seed=2))
        panels[f"{name}: {to_data[-1]:.2f}"] = x
    if run.is_main:
        _scatter(run.path("path.png"), real, panels)
    return {
        "path: node distances to data": to_data,
        "path: node distances to G0": to_g0,
        "path end: distance to G0 / distance to data": to_g0[-1] / max(to_data[-1], 1e-12),
    }


def toy_final(cfg, S, G, G0, n) -> tuple[dict, dict]:
    from common.metrics.toy import mmd_rbf, mode_stats, sliced_wasserstein

    data = S.extra["data"]
    g = torch.Generator().manual_seed(TEST_SEED + cfg.seed)
    z = torch.randn((n, *S.noise_shape), generator=g)
    real = data.sample(n, torch.Generator().manual_seed(TEST_SEED + 10_000 + cfg.seed))
    x, x0 = sample_generator(S, G, z.to(next(G.parameters()).device)), sample_generator(S, G0, z)
    xt, nfe = edm_sampler(S.teacher, torch.randn((n, 2), generator=g), 18, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    m = min(n, 2048)
    out = {}
    for name, s in (("", x), ("teacher ", xt.float()), ("G0 ", x0)):
        ms = mode_stats(s, data)
        out.update(
            {
                f"{name}SWD": sliced_wasserstein(s, real, n_proj=256, seed=0),
                f"{name}MMD": mmd_rbf(s[:m], real[:m]),
                f"{name}mode coverage": ms["mode_coverage"],
                f"{name}off-mode fraction": ms["off_mode_fraction"],
            }
        )
    return out, {"real": real, "student": x, "teacher": xt.float(), "G0": x0, "teacher_nfe": nfe}


def evaluate(cfg, run, S, G, state, *, path=None, stage1_cost=None, train_wall_time_s=None, cpu_time_s=None):
    """Write the curve (JSON + picture), the final metrics and the path check as this run's record."""
    t0 = time.time()
    curve = [tuple(p) for p in state.get("curve", [])]
    stage1 = cfg.stage1_steps
    metrics, extra, protocol = {}, {}, {}
    if curve and cfg.task in ("toy2d", "digits") and curve[-1][0] >= cfg.auc_window:
        metrics.update(curve_metrics(cfg, curve, stage1))
    if run.is_main and curve:
        atomic_curve = {"curve": curve, "stage1_steps": stage1, "ttur_ratio": cfg.ttur_ratio}
        from common.checkpoint import atomic_write_json

        atomic_write_json(atomic_curve, run.path("curve.json"))
        if cfg.task in ("toy2d", "digits"):
            label = "disback" if cfg.backtrack else "endpoint"
            plot_curves(
                run.path("curve.png"),
                {label: [curve]},
                f"{cfg.preset} {cfg.method} seed {cfg.seed}",
                threshold=cfg.threshold,
                window=cfg.auc_window,
            )
    G0 = S.generator_initial if hasattr(S, "generator_initial") else None
    if cfg.task == "toy2d":
        from papers.disback.model import G0_FILE, load_initial_generator

        G0 = load_initial_generator(S.make_net(), run.dir / G0_FILE) if (run.dir / G0_FILE).is_file() else G
        final, samples = toy_final(cfg, S, G, G0.cpu(), cfg.eval_samples)
        metrics.update(final)
        if path is not None:
            pc = path_check(cfg, run, S, path, samples["G0"], samples["real"])
            metrics["path end: distance to G0 / distance to data"] = pc.pop(
                "path end: distance to G0 / distance to data"
            )
            extra.update(pc)
        if run.is_main:
            _scatter(
                run.path("samples.png"),
                samples["real"],
                {
                    f"G0 ({metrics['G0 SWD']:.2f})": samples["G0"],
                    f"student ({metrics['SWD']:.2f})": samples["student"],
                    f"teacher ODE {samples['teacher_nfe']} NFE ({metrics['teacher SWD']:.2f})": samples["teacher"],
                },
            )
        protocol = {
            "curve": f"SWD (128 projections) of {cfg.curve_samples} samples from fixed noise vs {cfg.curve_samples} fixed "
            f"data samples, every {cfg.curve_every} generator steps",
            "AUC": f"trapezoid over generator steps [0, {cfg.auc_window}] / {cfg.auc_window}",
            "threshold": cfg.threshold,
            "stage 1 counted": "stage1_steps / ttur_ratio generator-step equivalents of G0 prepended",
            "final": f"{cfg.eval_samples} samples vs fresh data; SWD 256 projections; MMD 2048; modes within 3 std",
            "teacher": "EDM Heun, 18 steps",
        }
    if cfg.task == "digits":
        g = torch.Generator().manual_seed(TEST_SEED + cfg.seed)
        z = torch.randn((cfg.eval_samples, *S.noise_shape), generator=g).to(next(G.parameters()).device)
        probe = CurveProbe(cfg, S, z.device)
        x = sample_generator(S, G, z)
        metrics["FD-digitsCNN"] = probe.distance(x)
        protocol = {
            "curve": f"FD-digitsCNN of {cfg.curve_samples} samples from fixed noise vs the digits train split",
            "final": f"FD-digitsCNN of {cfg.eval_samples} samples (digits classifier features, not Inception)",
            "AUC": f"trapezoid over generator steps [0, {cfg.auc_window}] / {cfg.auc_window}",
            "threshold": cfg.threshold,
        }
    if cfg.task in ("digits", "edm64", "sd") and run.is_main:  # a sample grid and the student's weights
        from torchvision.utils import save_image

        from papers.disback.model import save_weights

        g = torch.Generator().manual_seed(TEST_SEED + cfg.seed)
        n = min(64, cfg.eval_samples)
        z = torch.randn((n, *S.noise_shape), generator=g).to(next(G.parameters()).device)
        x = sample_generator(S, G, z, S.sample_cond(n, g))
        if "vae" in S.extra:  # latents -> images
            vae = S.extra["vae"]
            with torch.no_grad():
                x = vae.decode(x.to(z.device, vae.dtype) / vae.config.scaling_factor).sample.float().cpu()
        save_image((x.clamp(-1, 1) + 1) / 2, run.path("samples.png"), nrow=8, padding=1)
        save_weights(G, run.path("generator.safetensors"))
        print(f"[disback] {cfg.preset}: samples.png and generator.safetensors in {run.dir}")
    cost = stage1_cost or {}
    timing = {
        "stage1_wall_s": cost.get("train_time_s", 0.0) or 0.0,
        "stage1_cpu_s": cost.get("cpu_time_s", 0.0) or 0.0,
        "stage2_cpu_s": cpu_time_s or 0.0,
    }
    extra.update({"run_dir": str(run.dir), "curve": curve, "path_dir": str(path.dir) if path else None})
    if run.is_main and metrics:
        rec = make_record(
            paper="disback",
            preset=cfg.preset,
            method=cfg.method or ("disback" if cfg.backtrack else "endpoint"),
            seed=cfg.seed,
            benchmark=cfg.benchmark or f"disback / {cfg.preset}",
            dataset=f"ring{cfg.num_modes} r={cfg.radius} std={cfg.mode_std}" if cfg.task == "toy2d" else cfg.task,
            metrics=metrics,
            protocol=protocol,
            config=cfg,
            wall_time_s=(time.time() - t0) + (train_wall_time_s or 0) + timing["stage1_wall_s"],
            nfe=1,
            peak_memory_mb=peak_memory_mb(),
            train_wall_time_s=train_wall_time_s,
            timing=timing,
            extra=extra,
        )
        p = write_record(rec, root=cfg.results_dir)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        print(f"[disback] {cfg.preset}/{rec['method']} seed {cfg.seed}: {summary}")
        print(f"[disback] run folder {run.dir}; record {p}")
    return metrics


def load_curve(run_dir) -> dict:
    return json.loads((Path(run_dir) / "curve.json").read_text())
