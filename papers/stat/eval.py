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

import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from papers.stat.arith import RARE_SKILLS, SKILLS, Generator, Problem
from papers.stat.model import CharCodec, greedy_solve

PAPER = "stat"
BENCHMARK = "stat / arith: equal-budget fine-tuning of a saturated student"
PROTOCOL_VERSION = "arith-exact-v1"


@dataclass
class EvalSets:
    val: list[Problem]
    test: list[Problem]
    per_skill: dict[str, list[Problem]]
    ood: list[Problem]

    def questions(self) -> set[str]:
        qs = {p.question for p in self.val + self.test + self.ood}
        for ps in self.per_skill.values():
            qs |= {p.question for p in ps}
        return qs


def make_eval_sets(cfg, seed: int) -> EvalSets:
    """Held-out sets of one seed, disjoint from each other by question string."""
    rng = random.Random(10_000 + seed)
    taken: set[str] = set()
    gen = Generator(max_value=cfg.max_value, exclude=taken)

    def draw(n, **kw):
        out = []
        while len(out) < n:
            p = gen.sample(rng, **kw)
            taken.add(p.question)
            out.append(p)
        return out

    val = draw(cfg.val_size)
    test = draw(cfg.test_size)
    per_skill = {s: draw(cfg.skill_test_size, must_have=s) for s in SKILLS}
    ood = draw(cfg.ood_size, n_ops=5)
    return EvalSets(val, test, per_skill, ood)


def step_rewards(problem: Problem, solution: str, noise: float = 0.0, rng: np.random.Generator | None = None):
    """Per-step rewards r_1..r_t of a solution (t = steps + answer line), in [0, 1]."""
    lines = solution.split(";")
    canon = problem.step_lines()
    r = np.array([1.0 if i < len(lines) and lines[i] == c else 0.0 for i, c in enumerate(canon)])
    if noise > 0:
        rng = rng or np.random.default_rng(0)
        r = np.clip(r + noise * rng.standard_normal(r.shape), 0.0, 1.0)
    return r.tolist()


def accuracy(problems: list[Problem], solutions: list[str]) -> float:
    """Exact final-answer accuracy."""
    ok = [s.endswith(f"#{p.answer}") and s.rsplit(";", 1)[-1] == f"#{p.answer}" for p, s in zip(problems, solutions)]
    return float(np.mean(ok)) if ok else 0.0


def evaluate(model, sets: EvalSets, codec: CharCodec, missing: list[str] | None = None) -> dict[str, float]:
    """Accuracies in percent: P-test, each skill, the profiled ('missing') vs other skills, OOD."""
    metrics = {}
    t0 = time.time()
    sols = greedy_solve(model, [p.question for p in sets.test], codec)
    metrics["acc_test"] = 100 * accuracy(sets.test, sols)
    for s, ps in sets.per_skill.items():
        metrics[f"acc_skill/{s}"] = 100 * accuracy(ps, greedy_solve(model, [p.question for p in ps], codec))
    metrics["acc_rare_skills"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in RARE_SKILLS]))
    metrics["acc_skill_mean"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in SKILLS]))
    if missing:
        metrics["acc_missing_skills"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in missing]))
        others = [s for s in SKILLS if s not in missing]
        metrics["acc_other_skills"] = float(np.mean([metrics[f"acc_skill/{s}"] for s in others]))
    metrics["acc_ood_5step"] = 100 * accuracy(sets.ood, greedy_solve(model, [p.question for p in sets.ood], codec))
    metrics["eval_time_s"] = time.time() - t0
    return metrics


def protocol(cfg, missing: list[str] | None) -> dict:
    return {
        "version": PROTOCOL_VERSION,
        "metric": "exact final-answer accuracy (%), greedy decoding",
        "test": f"{cfg.test_size} chains of 2-4 steps from the natural distribution, values <= {cfg.max_value}",
        "per_skill": f"{cfg.skill_test_size} chains per skill, each containing the skill",
        "ood": f"{cfg.ood_size} chains of 5 steps",
        "missing_skills": missing or [],
        "rare_skills": list(RARE_SKILLS),
        "base_seed": cfg.base_seed if cfg.base_seed >= 0 else cfg.seed,
        "budget_qa_pairs": cfg.budget,
        "ft_epochs": cfg.ft_epochs,
        "ft_lr": cfg.ft_lr,
        "teacher": f"oracle (label noise {cfg.label_noise}, solution error {cfg.teacher_error})",
        "stage1": f"step checker + N(0,{cfg.prm_noise}^2) noise, tau1={cfg.tau1}, tau2={cfg.tau2}",
    }


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
