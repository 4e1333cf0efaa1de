"""The STAT pipeline (Section 3 and Algorithm 1 of He et al. 2025), independent of the benchmark.

Stage 1  ``is_difficult``: a question is difficult when its process rewards fail any of three rules (Sec. 3.1):
         final step <= tau1, mean step reward <= tau1, or some intermediate step <= tau2.
Stage 2  ``missing_skill_profile``: the teacher names the skills each difficult answer lacks (MSP(q));
         the profile is f(s) = |{q : s in MSP(q)}| (Fig. 2).
Stage 3a ``stat_sel``: for every (q, s) pair draw m questions uniformly from M(s) (duplicates allowed), then
         sample the budget of QA pairs. Implied distribution (our formalisation, tested):
             P_sel(p) ∝ sum_s f(s) 1[p in M(s)] / |M(s)|                                              (Eq. S1)
         ``selection_weights`` computes it exactly.
Stage 3b ``stat_syn``: for every (q, s) pair show the teacher 3 references from M(s), ask for
         ``questions_per_pair`` new questions emphasising s, let it solve each ``n_solutions`` times, keep a
         question when >= ``min_agree`` solutions share the majority answer, and keep only those solutions.
Baselines ``natural_sample`` (continued SFT / MATH-Train), ``hard_sample`` (MATH-Hard) and ``embed_sel``
         (nearest neighbours of the difficult validation questions; the paper uses gte-Qwen2-7B embeddings,
         the embedded tier character 3-gram TF-IDF).
Budget   ``fill_budget``: every method trains on exactly ``budget`` QA pairs; a smaller set is sampled with
         replacement, a larger one without.

Left out: the continual variants (STAT-ConSel / ConSyn) and the GRPO stage.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from papers.stat.teacher import Teacher, majority_agreement, parallel_map


def is_difficult(rewards: Sequence[float], tau1: float = 0.85, tau2: float = 0.7) -> bool:
    """Reward filter of Section 3.1: R(q) = 0 iff r_t <= tau1 or mean(r) <= tau1 or exists i < t: r_i <= tau2."""
    r = list(rewards)
    if not r:
        return True
    return r[-1] <= tau1 or sum(r) / len(r) <= tau1 or any(x <= tau2 for x in r[:-1])


def missing_skill_profile(
    items: Sequence[tuple[str, str, str]], teacher: Teacher
) -> tuple[list[tuple[str, list[str]]], Counter]:
    """items = (question, student solution, subject) of the difficult validation questions.

    Returns the per-question MSP(q) (questions judged correct get an empty list and are dropped) and the
    aggregate profile f(s) = number of questions whose MSP contains s.
    """
    per_q, profile = [], Counter()
    answers = parallel_map(lambda it: teacher.missing_skills(*it), items, getattr(teacher, "concurrency", 1))
    for (question, _, _), msp in zip(items, answers):
        msp = list(dict.fromkeys(msp))
        if msp:
            per_q.append((question, msp))
            profile.update(msp)
    return per_q, profile


def build_skill_map(
    questions: Sequence[str], label: Callable[[str], list[str]], workers: int = 1
) -> dict[str, list[int]]:
    """M(s) = indices of the pool questions labelled with skill s (``workers`` concurrent labelling calls)."""
    skill_map: dict[str, list[int]] = {}
    for i, labels in enumerate(parallel_map(label, questions, workers)):
        for s in labels:
            skill_map.setdefault(s, []).append(i)
    return skill_map


def selection_weights(profile: Counter | dict, skill_map: dict[str, list[int]], n_pool: int) -> np.ndarray:
    """P_sel over the pool (Eq. S1): a mixture over missing skills weighted by f(s), uniform inside M(s)."""
    w = np.zeros(n_pool)
    for s, f in profile.items():
        members = skill_map.get(s, [])
        if f > 0 and members:
            w[members] += f / len(members)
    total = w.sum()
    if total <= 0:
        raise ValueError("no pool question has any profiled skill; STAT-Sel has nothing to select")
    return w / total


def stat_sel(
    per_q: Sequence[tuple[str, list[str]]], skill_map: dict[str, list[int]], m: int, rng: random.Random
) -> list[int]:
    """Stage 3a: for every (q, s) with s in MSP(q), m pool indices drawn uniformly from M(s)."""
    chosen = []
    for _, msp in per_q:
        for s in msp:
            members = skill_map.get(s)
            if members:
                chosen.extend(rng.choice(members) for _ in range(m))
    return chosen


def filter_by_agreement(solutions: list[str], min_agree: int, answer_of=None) -> list[str]:
    """Keep the solutions that share the majority final answer if at least ``min_agree`` of them do."""
    kwargs = {"answer_of": answer_of} if answer_of else {}
    answer, agreeing = majority_agreement(solutions, **kwargs)
    return agreeing if answer is not None and len(agreeing) >= min_agree else []


def stat_syn(
    per_q: Sequence[tuple[str, list[str]]],
    skill_map: dict[str, list[int]],
    pool_questions: Sequence[str],
    teacher: Teacher,
    rng: random.Random,
    *,
    questions_per_pair: int = 2,
    n_refs: int = 3,
    n_solutions: int = 3,
    min_agree: int = 2,
    target_unique: int = 0,
    max_passes: int = 10,
    forbidden: set[str] | None = None,
    dedupe: bool = False,
    valid: Callable[[str, str | None], bool] | None = None,
    answer_of=None,
    ref_text: Callable[[int], str] | None = None,
) -> tuple[list[tuple[str, str]], dict]:
    """Stage 3b. Returns the kept (question, solution) pairs and statistics of the agreement filter.

    Each pass proposes every question first and then solves the new ones (both with up to ``teacher.concurrency``
    calls at once). ``valid(question, solution)`` (solution None: the question alone) drops items the student
    cannot read, e.g. an LLM teacher's text for the character-level arithmetic student.
    """
    forbidden = forbidden or set()
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    stats = Counter()
    ref_text = ref_text or (lambda i: pool_questions[i])
    workers = getattr(teacher, "concurrency", 1)
    valid = valid or (lambda q, s: True)
    for _ in range(max_passes):
        jobs = []  # (skill, refs), one per requested question; the reference draws stay sequential (seeded)
        for _, msp in per_q:
            for s in msp:
                members = skill_map.get(s)
                if not members:
                    continue
                refs = [ref_text(rng.choice(members)) for _ in range(n_refs)]
                jobs += [(s, refs)] * questions_per_pair
        proposed = parallel_map(lambda job: teacher.propose_question(job[1], job[0]), jobs, workers)
        stats["proposed"] += len(proposed)
        fresh: list[str] = []
        fresh_set: set[str] = set()
        for q in proposed:
            if not q or q in seen or q in forbidden or q in fresh_set:
                stats["rejected_duplicate"] += 1
            elif not valid(q, None):
                stats["rejected_format"] += 1
            else:
                fresh.append(q)
                fresh_set.add(q)
        solutions = parallel_map(lambda q: teacher.solve(q, n_solutions), fresh, workers)
        for q, sols in zip(fresh, solutions):
            sols = filter_by_agreement(sols, min_agree, answer_of)
            if not sols:
                stats["rejected_disagreement"] += 1
                continue
            if dedupe:  # identical agreeing solutions are one training pair, not several
                sols = list(dict.fromkeys(sols))
            usable = [x for x in sols if valid(q, x)]
            stats["rejected_format"] += len(sols) - len(usable)
            if not usable:
                continue
            seen.add(q)
            stats["kept_questions"] += 1
            kept.extend((q, sol) for sol in usable)
        if len(seen) >= target_unique:
            break
    stats["kept_pairs"] = len(kept)
    return kept, dict(stats)


def fill_budget(items: Sequence, budget: int, rng: random.Random) -> list:
    """Exactly ``budget`` items: without replacement when there are enough, else all of them plus draws."""
    items = list(items)
    if not items:
        raise ValueError("empty training set; cannot fill the budget")
    if len(items) >= budget:
        return rng.sample(items, budget)
    return items + [rng.choice(items) for _ in range(budget - len(items))]


def embed_sel(difficult: Sequence[str], pool: Sequence[str], k: int) -> list[int]:
    """Embed-Sel baseline: the k nearest pool questions (cosine, character 3-gram TF-IDF) of each difficult one."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char", ngram_range=(3, 3)).fit(list(pool))
    a, b = vec.transform(list(difficult)), vec.transform(list(pool))
    sims = (a @ b.T).toarray()
    idx = np.argsort(-sims, axis=1)[:, :k]
    return [int(i) for row in idx for i in row]


def skill_histogram(questions: Sequence[str], label: Callable[[str], list[str]]) -> Counter:
    """How many training questions exercise each skill (the Fig. 2 comparison of training sets vs profile)."""
    c = Counter()
    for q in questions:
        c.update(set(label(q)))
    return c
