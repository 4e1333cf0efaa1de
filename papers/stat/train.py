"""STAT: Skill-Targeted Adaptive Training (He, Panigrahi, Lin, Arora 2025) — the end-to-end entry point.

    python -m papers.stat.train                       # embedded default: preset arith, method stat_sel, seed 0
    python -m papers.stat.train --set method=stat_syn seed=1
    accelerate launch papers/stat/train.py --preset arith-smoke
    python -m papers.stat.train --preset math --set method=stat_sel   # full scale (GPU, teacher endpoint)

Embedded pipeline (task=arith), one seed:
 0. held-out sets (val / test / per-skill / OOD) and a training pool P from the skewed natural distribution;
 1. base student: a GPT-2-style char LM trained by plain SFT on fresh samples of P until it plateaus. Cached in
    ``runs/stat/<preset>/base-seed<seed>/student`` and reused by every method; its record has method ``base``;
 2. Stage 1: greedy answers on P-val, step rewards (checker + noise), three-rule difficulty filter;
 3. Stage 2: the teacher names each difficult answer's missing skills -> Missing-Skill-Profile (profile.json);
 4. Stage 3: the method's training set of exactly ``budget`` QA pairs (sft / hard / embed_sel / stat_sel /
    stat_syn), saved as train_set.jsonl with its skill histogram;
 5. Stage 4: fine-tune the base on it (same epochs, LR and schedule for every method), evaluate, write the
    record, save the student as a transformers folder (``<run>/student``, loads with AutoModelForCausalLM).
Re-running resumes: the cached base and profile are reused and training continues from the last checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_dir, atomic_write_json, atomic_write_text, complete_dir
from common.config import config_to_dict, parse_cli
from common.launch import close_distributed, peak_memory_mb, start
from common.results import IDENTITY_IGNORED, make_record, write_record
from papers.stat.arith import SKILLS, Reserve, parse_question, readable_item
from papers.stat.config import PRESETS, Config
from papers.stat.eval import BENCHMARK, PAPER, evaluate, make_eval_sets, protocol, step_rewards, task_of
from papers.stat.model import CharCodec, build_student, build_tokenizer, encode_batch, greedy_solve, sft_loss
from papers.stat.pipeline import (
    build_skill_map,
    embed_sel,
    fill_budget,
    is_difficult,
    missing_skill_profile,
    skill_histogram,
    stat_sel,
    stat_syn,
)
from papers.stat.sft import epoch_order, main_process_only, process_micro_batches, sft_loop
from papers.stat.teacher import OracleTeacher

N_MISSING_REPORTED = 3  # skills counted as "missing" in acc_missing_skills: the top-3 of the profile


def train_loop(run, cfg, model, batches, total_steps: int, lr: float, ckpt_dir: Path, tag: str, on_step=None) -> None:
    """Plain SFT (the shared loop of sft.py); ``batches(step)`` returns the (question, solution) pairs of a step's
    global batch, the same on every process (each trains on its own share of it)."""
    codec = CharCodec()

    def micro_batches(step):
        return process_micro_batches(batches(step), run)

    def loss_of(m, pairs):
        return sft_loss(m, *encode_batch(pairs, codec, run.device))

    sft_loop(
        run, cfg, model, total_steps, lr, ckpt_dir, tag, micro_batches, loss_of, betas=(0.9, 0.98), on_step=on_step
    )


def save_student(model, folder: Path, key: dict | None = None) -> None:
    """A transformers folder (config, safetensors weights, character tokenizer) loadable anywhere, written atomically
    (a kill leaves the previous folder or none, never a config without weights). ``key``: the config that produced
    it, saved as ``trained_by.json`` so that a cache lookup can tell whether the folder is this config's."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        build_tokenizer().save_pretrained(tmp)
        if key is not None:
            atomic_write_json(key, tmp / "trained_by.json")


def load_student(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


_POOLS: dict = {}


def make_pool(cfg, sets, seed: int) -> list:
    """The training pool P of a seed (natural distribution; never an evaluation question). Cached per process."""
    key = (cfg.preset, cfg.pool_size, seed)
    if key not in _POOLS:
        gen = task_of(cfg).train_generator(cfg.max_value, exclude=sets.questions())
        build = lambda: gen.sample_many(cfg.pool_size, random.Random(20_000 + seed))  # noqa: E731
        _POOLS.clear()
        if cfg.reserve_frac > 0:  # deterministic: parallel runs of one seed build it once
            from papers.stat.eval import _problems, _questions, disk_cached

            parts = [cfg.preset, cfg.pool_size, seed, sorted(gen.weights.items()), cfg.n_ops, cfg.reserve_frac]
            _POOLS[key] = disk_cached(cfg, "pool", parts, build, _questions, _problems)
        else:
            _POOLS[key] = build()
    return _POOLS[key]


# Stage 3 / 4 knobs: they shape a method's training set and fine-tuning, never the base student or its profile.
FINE_TUNE_ONLY = (
    "m",
    "questions_per_pair",
    "n_solutions",
    "min_agree",
    "teacher_error",
    "syn_target_unique",
    "syn_dedupe",
    "syn_max_passes",
    "embed_k",
    "budget",
    "ft_epochs",
    "ft_lr",
    "lr_grid",
    "lr_grid_values",
    "math_budget",
)


def base_config(cfg: Config) -> Config:
    """The config of a seed's base run: the fine-tuning-only knobs (a grid or a method varies them) are reset to the
    preset's, so every method and grid point of a seed shares one base folder."""
    ref = PRESETS.get(cfg.preset) or Config()
    return replace(cfg, method="base", run_name="", **{k: getattr(ref, k) for k in FINE_TUNE_ONLY})


def base_key(bcfg: Config) -> dict:
    """What the base student's weights depend on: its whole config except where files go and how progress is
    logged (a longer ``steps`` is a different student)."""
    d = json.loads(json.dumps(config_to_dict(bcfg), default=str))
    return {k: v for k, v in d.items() if k not in IDENTITY_IGNORED and k != "threads"}


def _trained_by(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "trained_by.json").read_text())
    except (OSError, ValueError):
        return None


def train_base(cfg: Config) -> Path:
    """Train the base student of ``cfg.seed`` by plain SFT on fresh samples of P.

    Cached: the saved student is reused only when it is complete and was trained by this very config; otherwise
    training runs (resuming from the run's checkpoints, so a longer ``steps`` continues the saved run) and replaces it.
    """
    bcfg = base_config(cfg)
    folder = Path(cfg.out_dir) / PAPER / bcfg.resolved_run_name / "student"
    if complete_dir(folder) and _trained_by(folder) == base_key(bcfg):
        return folder
    run = start(bcfg, PAPER)
    t_cpu = time.process_time()
    sets = make_eval_sets(cfg, cfg.seed)
    codec = CharCodec()
    model = build_student(cfg.student_layers, cfg.student_dim, cfg.student_heads, cfg.context)
    gen = task_of(cfg).train_generator(cfg.max_value, exclude=sets.questions())
    val_sub = sets.val[: min(500, len(sets.val))]
    curve, skill_curve = [], []

    def batches(step):  # fresh samples of P every step (plain SFT with unlimited data): one global batch per step,
        # drawn alike on every process from (seed, step) alone, so the run does not depend on the number of processes
        rng = random.Random(hash((cfg.seed, step, 0)) & 0xFFFFFFFF)
        return [(p.question, p.solution) for p in gen.sample_many(bcfg.global_batch, rng)]

    def on_step(step, m):  # monitoring on the main process only (the curve is written there)
        if run.is_main and (step % cfg.eval_every == 0 or step == cfg.steps):
            from papers.stat.eval import accuracy

            acc = 100 * accuracy(val_sub, greedy_solve(m, [p.question for p in val_sub], codec))
            curve.append((step, acc))
            run.log(step, **{"base/acc_val": acc})
            if sets.curve:  # per-skill learning curve on its own reserved items (monitoring only)
                point = {"step": step}
                for s, ps in sets.curve.items():
                    point[s] = 100 * accuracy(ps, greedy_solve(m, [p.question for p in ps], codec))
                skill_curve.append(point)
                run.log(step, **{f"base/acc_skill/{s}": v for s, v in point.items() if s != "step"})
            m.train()

    train_loop(run, bcfg, model, batches, cfg.steps, cfg.lr, run.dir / "checkpoints", "base", on_step)
    model = run.accelerator.unwrap_model(model)
    if run.is_main:
        prev = run.dir / "saturation_curve.json"  # a resumed run keeps the points logged before the restart
        if prev.exists():
            old = json.loads(prev.read_text())
            curve = sorted(set(map(tuple, old["curve"])) | set(curve))
            done = {p["step"] for p in skill_curve}
            skill_curve = sorted(
                [p for p in old.get("skill_curve", []) if p["step"] not in done] + skill_curve, key=lambda p: p["step"]
            )
        save_student(model, folder, key=base_key(bcfg))
        cpu = time.process_time() - t_cpu + (json.loads(prev.read_text()).get("cpu_time_s", 0) if prev.exists() else 0)
        atomic_write_json({"curve": curve, "skill_curve": skill_curve, "cpu_time_s": cpu}, prev)
        _plot_curve(curve, run.dir / "saturation_curve.png")
    run.finish(close=False)  # the pipeline goes on in this process group
    return folder


def base_source(cfg: Config, seed: int) -> Config:
    """The config whose base student this run uses: its own, or with ``base_preset`` that preset's (the student is
    shared with that preset's runs, so it must be trained, and found in the cache, by that preset's config; this
    run's folders and threads)."""
    if not cfg.base_preset:
        return replace(cfg, seed=seed)
    keep = {k: getattr(cfg, k) for k in (*IDENTITY_IGNORED, "threads") if hasattr(cfg, k)}
    return replace(PRESETS[cfg.base_preset], seed=seed, **keep)


def base_stage(cfg: Config, sets, t_start: float):
    """Load (training if needed) the saturated base, build this seed's Missing-Skill-Profile, write its record."""
    base_seed = cfg.base_seed if cfg.base_seed >= 0 else cfg.seed
    t_cpu = time.process_time()
    folder = train_base(base_source(cfg, base_seed))
    bcfg = base_config(cfg)
    run = start(bcfg, PAPER)
    codec = CharCodec()
    model = load_student(folder)
    student_key = _digest(_trained_by(folder))  # the profile and the record belong to this very base student
    profile_path = run.dir / "profile.json"
    if run.is_main and _read_json(profile_path).get("base_student_key") != student_key:  # teacher calls: main only
        profile_data = {**build_profile(cfg, model, sets, codec), "base_student_key": student_key}
        atomic_write_json(profile_data, profile_path)
        _plot_profile(profile_data, run.dir / "missing_skill_profile.png")
    run.accelerator.wait_for_everyone()
    prof = json.loads(profile_path.read_text())
    rec_path = Path(cfg.results_dir) / PAPER / cfg.preset / f"base-seed{cfg.seed}.json"
    if run.is_main and _read_json(rec_path).get("extra", {}).get("base_student_key") != student_key:
        items: dict = {}
        metrics = evaluate(model, sets, codec, prof["missing"], rare=task_of(cfg).rare, items=items)
        metrics["difficult_frac_val"] = prof["difficult_frac"]
        rec = make_record(
            paper=PAPER,
            preset=cfg.preset,
            method="base",
            seed=cfg.seed,
            benchmark=benchmark(cfg),
            dataset="arith (embedded)",
            metrics=metrics,
            protocol=protocol(bcfg, prof["missing"]),
            config=bcfg,
            wall_time_s=time.time() - t_start,
            peak_memory_mb=peak_memory_mb(),
            extra={
                "profile": prof["profile"],
                "base_student": str(folder),
                "items": items,
                "base_train": _read_json(folder.parent / "saturation_curve.json"),
                "cpu_time_s": time.process_time() - t_cpu,
                "base_student_key": student_key,
            },
        )
        write_record(rec, cfg.results_dir, same_config=False)  # the base does not depend on the method
    run.finish(close=False)  # the pipeline goes on in this process group
    return model, prof


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _digest(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def benchmark(cfg) -> str:
    return f"{BENCHMARK} ({cfg.preset})"


def build_profile(cfg, model, sets, codec) -> dict:
    """Stages 1-2 on P-val: difficult questions by step reward, then the teacher's Missing-Skill-Profile."""
    sols = greedy_solve(model, [p.question for p in sets.val], codec)
    rng = np.random.default_rng(cfg.seed)
    difficult = [
        (p, s)
        for p, s in zip(sets.val, sols)
        if is_difficult(step_rewards(p, s, cfg.prm_noise, rng), cfg.tau1, cfg.tau2)
    ]
    wrong = [p.solution != s for p, s in zip(sets.val, sols)]
    flagged = {p.question for p, _ in difficult}
    tp = sum(w and p.question in flagged for p, w in zip(sets.val, wrong))
    teacher = make_teacher(cfg)
    per_q, profile = missing_skill_profile([(p.question, s, "arithmetic") for p, s in difficult], teacher)
    ranked = [s for s, _ in profile.most_common()]
    return {
        "difficult_frac": len(difficult) / len(sets.val),
        "wrong_frac": float(np.mean(wrong)),
        "filter_precision": tp / max(1, len(difficult)),
        "filter_recall": tp / max(1, sum(wrong)),
        "per_question": per_q,
        "difficult_questions": [p.question for p, _ in difficult],
        "profile": dict(profile.most_common()),
        "missing": ranked[:N_MISSING_REPORTED],
    }


def make_teacher(cfg):
    if cfg.teacher == "oracle":
        return OracleTeacher(
            cfg.label_noise,
            cfg.teacher_error,
            cfg.max_missing,
            seed=cfg.seed,
            generator=task_of(cfg).train_generator(cfg.max_value),  # synthesis never emits a reserved question
            catalogue=task_of(cfg).active,
        )
    from papers.stat.teacher import llm_teacher

    hint = (
        "\nThe problem is evaluated left to right (M = max). Write only the steps a<op>b=c separated by ';' and end"
        " with '#' and the answer, e.g. 37+48=85;85%7=1;#1"
    )
    return llm_teacher(cfg, {"arithmetic": list(SKILLS)}, solve_hint=hint)


def build_train_set(cfg, prof, pool, sets, run) -> tuple[list[tuple[str, str]], dict]:
    """Stage 3: exactly ``budget`` (question, solution) pairs for the method."""
    rng = random.Random(30_000 + cfg.seed)
    per_q = [(q, msp) for q, msp in prof["per_question"]]
    pool_q = [p.question for p in pool]
    label = lambda q: sorted(set(parse_question(q).skills))  # noqa: E731 - exact Skill-Map of the chains
    info: dict = {}
    task = task_of(cfg)
    if cfg.method == "sft":
        gen = task.train_generator(cfg.max_value, exclude=sets.questions())
        items = [(p.question, p.solution) for p in gen.sample_many(cfg.budget, rng)]
    elif cfg.method == "uniform":  # control: every active skill equally frequent (knows what P starves)
        gen = task.train_generator(cfg.max_value, weights=task.uniform_weights(), exclude=sets.questions())
        items = [(p.question, p.solution) for p in gen.sample_many(cfg.budget, rng)]
    elif cfg.method == "hard":
        longest = max(len(p.ops) for p in pool)
        items = [(p.question, p.solution) for p in pool if len(p.ops) == longest]
    elif cfg.method == "embed_sel":
        idx = embed_sel(prof["difficult_questions"], pool_q, cfg.embed_k)
        items = [(pool[i].question, pool[i].solution) for i in idx]
    elif cfg.method in ("stat_sel", "stat_sel_shuffled"):
        skill_map = build_skill_map(pool_q, label)
        if cfg.method == "stat_sel_shuffled":  # control: the profile permuted across skills
            perm = shuffled_skills(task.active, set(prof["profile"]), random.Random(50_000 + cfg.seed))
            per_q = [(q, [perm.get(s, s) for s in msp]) for q, msp in per_q]
            info["permutation"] = perm
        idx = stat_sel(per_q, skill_map, cfg.m, rng)
        items = [(pool[i].question, pool[i].solution) for i in idx]
        info["selected_unique"] = len(set(idx))
    elif cfg.method == "stat_syn":
        skill_map = build_skill_map(pool_q, label)
        teacher = make_teacher(replace(cfg, seed=cfg.seed + 1))
        reserve = Reserve(cfg.reserve_frac) if cfg.reserve_frac > 0 else set()
        items, stats = stat_syn(
            per_q,
            skill_map,
            pool_q,
            teacher,
            rng,
            questions_per_pair=cfg.questions_per_pair,
            n_solutions=cfg.n_solutions,
            min_agree=cfg.min_agree,
            target_unique=cfg.syn_target_unique,
            max_passes=cfg.syn_max_passes,
            dedupe=cfg.syn_dedupe,
            forbidden=sets.questions(),
            valid=lambda q, s: readable_item(q, s, cfg.context, cfg.max_value) and q not in reserve,
        )
        info.update(stats)
        info["kept_wrong_solutions"] = sum(parse_question(q).solution != s for q, s in items)
    else:
        raise ValueError(cfg.method)
    info["before_budget"] = len(items)
    info["unique_questions"] = len({q for q, _ in items})
    info["unique_pairs"] = len(set(items))
    items = fill_budget(items, cfg.budget, rng)
    info["unique_questions_in_budget"] = len({q for q, _ in items})
    info["eval_questions_in_train_set"] = len({q for q, _ in items} & sets.questions())
    hist = skill_histogram([q for q, _ in items], label)
    info["skill_histogram"] = {s: hist.get(s, 0) for s in SKILLS}
    if run.is_main:
        atomic_write_text(
            "".join(json.dumps({"question": q, "solution": s}) + "\n" for q, s in items), run.dir / "train_set.jsonl"
        )
    return items, info


def shuffled_skills(active, support: set, rng: random.Random) -> dict[str, str]:
    """A permutation of the active skills that moves every profiled skill (no profiled skill maps to itself)."""
    skills = list(active)
    for _ in range(1000):
        perm = skills[:]
        rng.shuffle(perm)
        mapping = dict(zip(skills, perm))
        if all(mapping[s] != s for s in support if s in mapping):
            return mapping
    raise RuntimeError("could not find a permutation that moves every profiled skill")


def main(argv=None) -> None:
    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    if cfg.task == "math":
        from papers.stat.fullscale import run_math

        return run_math(cfg)
    run_arith(cfg)


def run_arith(cfg: Config) -> Path | None:
    """One (preset, method, seed) of the embedded pipeline in this process; returns the record path."""
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    t_cpu = time.process_time()
    sets = make_eval_sets(cfg, cfg.seed)
    base, prof = base_stage(cfg, sets, t_start)
    if cfg.method == "base":
        close_distributed()
        return None
    rec_preset, rec_method = cfg.preset, cfg.method
    if cfg.lr_grid:  # a learning-rate grid run: its own folder and record name, never a claim record
        rec_preset, rec_method = f"{cfg.preset}-lrgrid", f"{cfg.method}@lr={cfg.ft_lr:g}"
        cfg = replace(cfg, run_name=f"{cfg.preset}/lrgrid/{cfg.method}-lr{cfg.ft_lr:g}-seed{cfg.seed}")
    run = start(cfg, PAPER)
    pool = make_pool(cfg, sets, cfg.seed)
    items, info = main_process_only(run, lambda: build_train_set(cfg, prof, pool, sets, run))
    ft_steps = cfg.ft_epochs * math.ceil(cfg.budget / cfg.global_batch)
    order = epoch_order(len(items), cfg.ft_epochs, 40_000 + 97 * cfg.seed)
    per_step = cfg.global_batch

    def batches(step):
        idx = order[(step * per_step) % len(order) :][:per_step]
        return [items[i] for i in idx]

    t_ft = time.time()
    model = build_student(cfg.student_layers, cfg.student_dim, cfg.student_heads, cfg.context)
    model.load_state_dict(base.state_dict())
    train_loop(run, cfg, model, batches, ft_steps, cfg.ft_lr, run.dir / "checkpoints", cfg.method)
    model = run.accelerator.unwrap_model(model)
    train_time = time.time() - t_ft
    path = None
    if run.is_main:
        save_student(model, run.dir / "student")
        atomic_write_json(info, run.dir / "train_set_info.json")
        path = write_method_record(
            cfg, model, sets, prof, info, rec_preset, rec_method, t_start, t_cpu, train_time, select_only=cfg.lr_grid
        )
        print(f"record: {path}\nstudent: {run.dir / 'student'}\nwall time: {time.time() - t_start:.0f}s")
    run.finish()
    return path


def write_method_record(
    cfg, model, sets, prof, info, rec_preset, rec_method, t_start, t_cpu, train_time=None, select_only=False, extra=None
) -> Path:
    """Evaluate a fine-tuned student and write its record (a grid run: the LR-selection set only)."""
    eval_items: dict = {}
    if select_only:
        from papers.stat.eval import correct, pack_bits

        t0 = time.time()
        ok = correct(sets.select, greedy_solve(model, [p.question for p in sets.select], CharCodec()))
        eval_items["select"] = pack_bits(ok)
        metrics = {"acc_select": 100 * sum(ok) / len(ok), "eval_time_s": time.time() - t0}
    else:
        metrics = evaluate(model, sets, CharCodec(), prof["missing"], rare=task_of(cfg).rare, items=eval_items)
    rec = make_record(
        paper=PAPER,
        preset=rec_preset,
        method=rec_method,
        seed=cfg.seed,
        benchmark=benchmark(cfg) + (" LR grid" if select_only else ""),
        dataset="arith (embedded)",
        metrics=metrics,
        protocol=protocol(cfg, prof["missing"]),
        config=cfg,
        wall_time_s=time.time() - t_start,
        train_wall_time_s=train_time,
        peak_memory_mb=peak_memory_mb(),
        extra={
            "train_set": info,
            "profile": prof["profile"],
            "items": eval_items,
            "cpu_time_s": time.process_time() - t_cpu,
            **(extra or {}),
        },
    )
    print(json.dumps({k: round(v, 2) for k, v in metrics.items()}, indent=1))
    return write_record(rec, cfg.results_dir)


def record_from_grid_run(cfg: Config) -> Path:
    """The claim record of ``cfg`` (its method, seed and chosen LR) from the finished LR-grid run of the same
    configuration: the saved student is evaluated on every test set; nothing is retrained."""
    torch.set_num_threads(cfg.threads)
    t_start, t_cpu = time.time(), time.process_time()
    grid_dir = Path(cfg.out_dir) / PAPER / cfg.preset / "lrgrid" / f"{cfg.method}-lr{cfg.ft_lr:g}-seed{cfg.seed}"
    if not (grid_dir / "student" / "config.json").exists():
        raise SystemExit(f"error: {grid_dir}/student missing; run the LR grid first")
    sets = make_eval_sets(cfg, cfg.seed)
    prof = json.loads((Path(cfg.out_dir) / PAPER / cfg.preset / f"base-seed{cfg.seed}" / "profile.json").read_text())
    info = json.loads((grid_dir / "train_set_info.json").read_text())
    model = load_student(grid_dir / "student")
    return write_method_record(
        cfg, model, sets, prof, info, cfg.preset, cfg.method, t_start, t_cpu, extra={"from_lr_grid_run": str(grid_dir)}
    )


def _plot_curve(curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    if curve:
        ax.plot(*zip(*curve), marker="o")
    ax.set_xlabel("base SFT step")
    ax.set_ylabel("P-val accuracy (%)")
    ax.set_title("saturation of the base student")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_profile(prof: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = Counter(prof["profile"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.barh([s for s in SKILLS], [counts.get(s, 0) for s in SKILLS])
    ax.set_xlabel("f(s): difficult val questions missing s")
    ax.set_title("Missing-Skill-Profile (Fig. 2 analogue)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
