"""Evaluation of the embedded STAT student: exact-answer accuracy overall, per skill, out of distribution.

``EvalSets`` holds the fixed held-out sets of one seed: P-val (the paper's Q_val, the profile is built on it),
P-test (natural distribution), one test set per skill (every question contains that skill; Fig. 4 analogue) and
an OOD set of 5-step chains (the AIME/AMC analogue). ``step_rewards`` is the process-reward stand-in of Stage 1:
1 for a step line identical to the canonical one, 0 otherwise, plus optional Gaussian noise.

Run on a saved student:  ``python -m papers.stat.eval --preset arith --set seed=0 method=stat_sel``
(reads ``<run folder>/student``, rebuilds the sets of the seed, prints the metrics and rewrites the record).

Left out: the full-scale evaluation (``papers/stat/fullscale.py`` has MATH-500 / GSM8K / AIME / AMC).
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from papers.stat.arith import (
    NATURAL_WEIGHTS,
    RARE_SKILLS,
    SKILLS,
    Generator,
    Problem,
    Reserve,
    calibrate_weights,
    skill_weights,
)
from papers.stat.model import CharCodec, greedy_solve

PAPER = "stat"
BENCHMARK = "stat / arith: equal-budget fine-tuning of a saturated student"
PROTOCOL_VERSION = "arith-exact-v1"


@dataclass(frozen=True)
class Task:
    """The natural distribution of a preset: step weights, active / rare skills, chain lengths, reservation."""

    weights: dict
    active: tuple
    rare: tuple
    n_ops: tuple
    ood_ops: int
    reserve_frac: float
    measured_shares: dict = field(default_factory=dict)

    def train_generator(self, max_value: int, weights: dict | None = None, exclude=None) -> Generator:
        """A generator for training data: never emits a reserved (evaluation) question."""
        if self.reserve_frac > 0:
            exclude = Reserve(self.reserve_frac)
        exact = self.reserve_frac > 0  # the redesigned presets sample with exact feasibility
        return Generator(weights or self.weights, n_ops=self.n_ops, exclude=exclude, max_value=max_value, exact=exact)

    def uniform_weights(self) -> dict:
        return skill_weights(self.active)


@functools.lru_cache(maxsize=8)
def _task(mix, skills_off, rare_skills, rare_share, rare_shares, n_ops, ood_ops, reserve_frac, max_value) -> Task:
    n_ops_t = tuple(int(x) for x in n_ops.split(","))
    off = {x for x in skills_off.split(",") if x}
    active = tuple(s for s in SKILLS if s not in off)
    if mix == "legacy":
        return Task(dict(NATURAL_WEIGHTS), tuple(SKILLS), RARE_SKILLS, n_ops_t, ood_ops, reserve_frac)
    if mix == "uniform":
        rare = tuple(x for x in rare_skills.split(",") if x)
        return Task(skill_weights(active), active, rare, n_ops_t, ood_ops, reserve_frac)
    rare = tuple(x for x in rare_skills.split(",") if x)
    targets = {r: rare_share for r in rare}
    for item in filter(None, rare_shares.split(",")):
        name, value = item.split("=")
        targets[name.strip()] = float(value)
    weights, shares = calibrate_weights(active, targets, n_ops=n_ops_t, max_value=max_value)
    return Task(weights, active, rare, n_ops_t, ood_ops, reserve_frac, shares)


def disk_cached(cfg, name: str, key_parts, build, encode, decode):
    """``build()`` cached on disk under ``<out_dir>/stat/cache/`` by a hash of ``key_parts`` (deterministic
    artefacts only: calibrated weights, evaluation sets, pools), so parallel runs of one seed build them once."""
    import hashlib
    import json
    from pathlib import Path

    from common.checkpoint import atomic_write_json

    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cfg.out_dir) / "stat" / "cache" / f"{name}-{digest}.json"
    if path.exists():
        try:
            return decode(json.loads(path.read_text()))
        except (ValueError, KeyError):
            pass
    value = build()
    atomic_write_json(encode(value), path)
    return value


def _questions(problems) -> list[str]:
    return [p.question for p in problems]


def _problems(questions) -> list[Problem]:
    from papers.stat.arith import parse_question

    return [parse_question(q) for q in questions]


def task_of(cfg) -> Task:
    if cfg.skill_mix == "calibrated":  # the calibration samples ~160K chains: build it once per configuration
        key = [cfg.skills_off, cfg.rare_skills, cfg.rare_share, cfg.rare_shares, cfg.n_ops, cfg.max_value]
        w, shares = disk_cached(
            cfg,
            "task",
            key,
            lambda: (lambda t: (t.weights, t.measured_shares))(_task_uncached(cfg)),
            lambda v: {"weights": v[0], "shares": v[1]},
            lambda d: (d["weights"], d["shares"]),
        )
        off = {x for x in cfg.skills_off.split(",") if x}
        return Task(
            w,
            tuple(s for s in SKILLS if s not in off),
            tuple(x for x in cfg.rare_skills.split(",") if x),
            tuple(int(x) for x in cfg.n_ops.split(",")),
            cfg.ood_ops,
            cfg.reserve_frac,
            shares,
        )
    return _task_uncached(cfg)


def _task_uncached(cfg) -> Task:
    return _task(
        cfg.skill_mix,
        cfg.skills_off,
        cfg.rare_skills,
        cfg.rare_share,
        cfg.rare_shares,
        cfg.n_ops,
        cfg.ood_ops,
        cfg.reserve_frac,
        cfg.max_value,
    )


@dataclass
class EvalSets:
    val: list[Problem]
    test: list[Problem]
    per_skill: dict[str, list[Problem]]
    ood: list[Problem]
    select: list[Problem] = field(default_factory=list)
    curve: dict[str, list[Problem]] = field(default_factory=dict)  # per-skill items for the base learning curve

    def all_problems(self) -> list[Problem]:
        groups = [*self.per_skill.values(), *self.curve.values()]
        return self.val + self.test + self.ood + self.select + [p for ps in groups for p in ps]

    def questions(self) -> set[str]:
        return {p.question for p in self.all_problems()}


@functools.lru_cache(maxsize=4)
def _eval_sets(cfg_key, seed: int) -> EvalSets:
    cfg = cfg_key
    task = task_of(cfg)
    rng = random.Random(10_000 + seed)
    if task.reserve_frac > 0:  # only hash-reserved questions, disjoint from each other by string
        taken = Reserve(task.reserve_frac, invert=True)
    else:
        taken = set()
    gen = Generator(task.weights, n_ops=task.n_ops, exclude=taken, max_value=cfg.max_value, exact=task.reserve_frac > 0)

    def draw(n, **kw):
        out = []
        while len(out) < n:
            p = gen.sample(rng, **kw)
            taken.add(p.question)
            out.append(p)
        return out

    val = draw(cfg.val_size)
    test = draw(cfg.test_size)
    per_skill = {s: draw(cfg.skill_test_size, must_have=s) for s in task.active}
    ood = draw(cfg.ood_size, n_ops=task.ood_ops)
    select = draw(cfg.select_size) if cfg.select_size else []
    curve = {s: draw(cfg.skill_curve_size, must_have=s) for s in task.active} if cfg.skill_curve_size else {}
    return EvalSets(val, test, per_skill, ood, select, curve)


def make_eval_sets(cfg, seed: int) -> EvalSets:
    """Held-out sets of one seed: profiling set (val), P-test, per-skill sets, OOD, LR-selection set.

    They are disjoint from each other by question string; with ``reserve_frac`` > 0 every one of their questions is
    hash-reserved, so no training generator of any seed can emit it.
    """
    from dataclasses import replace

    key = replace(cfg, seed=seed, method="base", ft_lr=0.0, run_name="", lr_grid=False)
    if cfg.reserve_frac <= 0:
        return _eval_sets(key, seed)
    fields = ["skill_mix", "skills_off", "rare_skills", "rare_share", "rare_shares", "n_ops", "ood_ops"]
    fields += ["reserve_frac", "max_value", "val_size", "test_size", "skill_test_size", "ood_size", "select_size"]
    fields += ["skill_curve_size"]
    parts = [getattr(cfg, f) for f in fields] + [seed]

    def encode(sets: EvalSets) -> dict:
        return {
            "val": _questions(sets.val),
            "test": _questions(sets.test),
            "per_skill": {k: _questions(v) for k, v in sets.per_skill.items()},
            "ood": _questions(sets.ood),
            "select": _questions(sets.select),
            "curve": {k: _questions(v) for k, v in sets.curve.items()},
        }

    def decode(d: dict) -> EvalSets:
        return EvalSets(
            _problems(d["val"]),
            _problems(d["test"]),
            {k: _problems(v) for k, v in d["per_skill"].items()},
            _problems(d["ood"]),
            _problems(d["select"]),
            {k: _problems(v) for k, v in d["curve"].items()},
        )

    return disk_cached(cfg, "eval_sets", parts, lambda: _eval_sets(key, seed), encode, decode)


def pack_bits(bits) -> str:
    """0/1 per item as a hex string (4 items per character), for item-level paired bootstraps from records."""
    bits = [int(b) for b in bits]
    bits += [0] * (-len(bits) % 4)
    return "".join(f"{8 * a + 4 * b + 2 * c + d:x}" for a, b, c, d in zip(*[iter(bits)] * 4))


def unpack_bits(text: str, n: int) -> np.ndarray:
    out = [(int(ch, 16) >> k) & 1 for ch in text for k in (3, 2, 1, 0)]
    return np.array(out[:n], dtype=np.int8)


def step_rewards(problem: Problem, solution: str, noise: float = 0.0, rng: np.random.Generator | None = None):
    """Per-step rewards r_1..r_t of a solution (t = steps + answer line), in [0, 1]."""
    lines = solution.split(";")
    canon = problem.step_lines()
    r = np.array([1.0 if i < len(lines) and lines[i] == c else 0.0 for i, c in enumerate(canon)])
    if noise > 0:
        rng = rng or np.random.default_rng(0)
        r = np.clip(r + noise * rng.standard_normal(r.shape), 0.0, 1.0)
    return r.tolist()


def correct(problems: list[Problem], solutions: list[str]) -> list[bool]:
    """Exact final-answer correctness per item."""
    return [s.endswith(f"#{p.answer}") and s.rsplit(";", 1)[-1] == f"#{p.answer}" for p, s in zip(problems, solutions)]


def accuracy(problems: list[Problem], solutions: list[str]) -> float:
    """Exact final-answer accuracy."""
    ok = correct(problems, solutions)
    return float(np.mean(ok)) if ok else 0.0


def evaluate(
    model,
    sets: EvalSets,
    codec: CharCodec,
    missing: list[str] | None = None,
    rare=RARE_SKILLS,
    items: dict | None = None,
) -> dict[str, float]:
    """Accuracies in percent: P-test, each skill, the profiled ('missing') vs other skills, OOD, LR-selection set.

    ``items``, when given, receives the per-item correctness of every set (hex-packed, see ``pack_bits``).
    """
    metrics = {}
    t0 = time.time()

    def run(name, problems):
        ok = correct(problems, greedy_solve(model, [p.question for p in problems], codec))
        if items is not None:
            items[name] = pack_bits(ok)
        return 100 * float(np.mean(ok)) if ok else 0.0

    metrics["acc_test"] = run("test", sets.test)
    skills = list(sets.per_skill)
    for s, ps in sets.per_skill.items():
        metrics[f"acc_skill/{s}"] = run(f"skill/{s}", ps)
    rare = [s for s in rare if s in sets.per_skill]
    if rare:
        metrics["acc_rare_skills"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in rare]))
        common = [s for s in skills if s not in rare]
        if common:
            metrics["acc_common_skills"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in common]))
    metrics["acc_skill_mean"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in skills]))
    if missing:
        missing = [s for s in missing if s in sets.per_skill]
        metrics["acc_missing_skills"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in missing]))
        others = [s for s in skills if s not in missing]
        if others:
            metrics["acc_other_skills"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in others]))
    ood_name = "acc_ood_5step" if len(sets.ood) and len(sets.ood[0].ops) == 5 else "acc_ood"
    metrics[ood_name] = run("ood", sets.ood)
    if sets.select:
        metrics["acc_select"] = run("select", sets.select)
    metrics["eval_time_s"] = time.time() - t0
    return metrics


def protocol(cfg, missing: list[str] | None) -> dict:
    task = task_of(cfg)
    ops = f"{min(task.n_ops)}-{max(task.n_ops)}"
    out = {
        "version": PROTOCOL_VERSION if cfg.reserve_frac == 0 else "arith-exact-v2-hash-reserved",
        "metric": "exact final-answer accuracy (%), greedy decoding",
        "test": f"{cfg.test_size} chains of {ops} steps from the natural distribution, values <= {cfg.max_value}",
        "per_skill": f"{cfg.skill_test_size} chains per skill, each containing the skill",
        "ood": f"{cfg.ood_size} chains of {task.ood_ops} steps",
        "missing_skills": missing or [],
        "rare_skills": list(task.rare),
        "base_seed": cfg.base_seed if cfg.base_seed >= 0 else cfg.seed,
        "budget_qa_pairs": cfg.budget,
        "ft_epochs": cfg.ft_epochs,
        "ft_lr": cfg.ft_lr,
        "teacher": f"oracle (label noise {cfg.label_noise}, solution error {cfg.teacher_error})",
        "stage1": f"step checker + N(0,{cfg.prm_noise}^2) noise, tau1={cfg.tau1}, tau2={cfg.tau2}",
    }
    if cfg.reserve_frac > 0:
        out["reservation"] = f"evaluation questions = blake2b-hash share {cfg.reserve_frac} of the question space"
        out["measured_step_shares"] = {s: round(v, 5) for s, v in task.measured_shares.items() if v > 0}
        out["select"] = f"{cfg.select_size} natural chains for choosing the fine-tuning LR"
    return out


def main(argv=None) -> None:
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from common.config import parse_cli
    from papers.stat.config import PRESETS, Config

    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    torch.set_num_threads(cfg.threads)
    folder = Path(cfg.out_dir) / PAPER / cfg.resolved_run_name / "student"
    if not folder.is_dir():
        raise SystemExit(
            f"error: {folder} does not exist; make it with python -m papers.stat.train "
            f"--preset {cfg.preset} --set seed={cfg.seed} method={cfg.method}"
        )
    model = AutoModelForCausalLM.from_pretrained(folder)
    print(json.dumps(evaluate(model, make_eval_sets(cfg, cfg.seed), CharCodec()), indent=2))


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
