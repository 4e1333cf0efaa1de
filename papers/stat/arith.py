"""Embedded benchmark for STAT: multi-step integer arithmetic chains with a known skill taxonomy.

A problem is a chain of 2-4 operations evaluated left to right, written compactly, e.g. ``37+48*3%7?``
(read ``((37+48)*3)%7``). Its canonical step-by-step solution has one line per operation and a final
answer line: ``37+48=85;85*3=255;255%7=3;#3``. Every step exercises exactly one skill from a fixed
catalogue (carry / no carry, borrow / no borrow, 1- or 2-digit multiplier, exact division, remainder,
maximum), so the generator knows each problem's Skill-Map exactly, a step checker can grade every line
(our stand-in for the paper's process reward model), and a "teacher" can name the skill of the first
wrong step (the Missing-Skill-Profile). This is the CPU analogue of MATH + the skill catalogue of the
paper's Tables 5-6; it is our construction, not the paper's.

The natural distribution P is skewed on purpose: six common skills share about 90% of the steps and three
rare ones (sub-borrow, mul-2digit, mod) about 3% each, so a small student trained on P saturates while
failing mostly on the rare skills. All values stay in [0, max_value] (99 by default).

Evaluation questions can be *reserved by a hash of the question* (``Reserve``): a fixed fraction of the question
space, chosen by ``blake2b(salt + question)``, belongs to evaluation only. Every training path (base stream, pools,
continued SFT, synthesis) samples with ``exclude=Reserve(...)`` and so can never emit an evaluation question, for any
seed; evaluation sets sample with ``Reserve(..., invert=True)`` and contain only reserved questions.
``calibrate_weights`` sets the nominal weight of each rare skill so that its *measured* share of training steps hits
a target (feasibility resampling makes nominal and measured shares differ by up to 20x).

Left out: natural-language word problems (reasoning-gym's generators would be a second set).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

SKILLS: tuple[str, ...] = (
    "add-no-carry",
    "add-carry",
    "sub-no-borrow",
    "sub-borrow",
    "mul-1digit",
    "mul-2digit",
    "div-exact",
    "mod",
    "max",
)
SKILL_INDEX = {s: i for i, s in enumerate(SKILLS)}
RARE_SKILLS = ("sub-borrow", "mul-2digit", "mod")
# Natural step distribution (before feasibility resampling): common skills ~15% each, rare ~3% each.
NATURAL_WEIGHTS: dict[str, float] = {
    "add-no-carry": 0.16,
    "add-carry": 0.16,
    "sub-no-borrow": 0.15,
    "sub-borrow": 0.03,
    "mul-1digit": 0.15,
    "mul-2digit": 0.03,
    "div-exact": 0.16,
    "mod": 0.03,
    "max": 0.13,
}
OP_OF_SKILL = {
    "add-no-carry": "+",
    "add-carry": "+",
    "sub-no-borrow": "-",
    "sub-borrow": "-",
    "mul-1digit": "*",
    "mul-2digit": "*",
    "div-exact": "/",
    "mod": "%",
    "max": "M",
}
MAX_VALUE = 99  # every intermediate value stays in [0, MAX_VALUE]
VOCAB = "0123456789+-*/%M=;#?"  # character vocabulary of questions and solutions


def _digits(x: int, n: int = 3) -> list[int]:
    return [(x // 10**i) % 10 for i in range(n)]


def has_carry(a: int, b: int) -> bool:
    return any(da + db > 9 for da, db in zip(_digits(a), _digits(b)))


def has_borrow(a: int, b: int) -> bool:
    return any(da < db for da, db in zip(_digits(a), _digits(b)))


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b
    if op == "%":
        return a % b
    if op == "M":
        return max(a, b)
    raise ValueError(f"unknown operator {op!r}")


def skill_of(a: int, op: str, b: int) -> str:
    """The skill one step exercises (the exact Skill-Map of a step)."""
    if op == "+":
        return "add-carry" if has_carry(a, b) else "add-no-carry"
    if op == "-":
        return "sub-borrow" if has_borrow(a, b) else "sub-no-borrow"
    if op == "*":
        return "mul-2digit" if b >= 10 else "mul-1digit"
    if op == "/":
        return "div-exact"
    if op == "%":
        return "mod"
    if op == "M":
        return "max"
    raise ValueError(op)


def sample_operand(v: int, skill: str, rng: random.Random, max_value: int = MAX_VALUE, tries: int = 40) -> int | None:
    """An operand b such that ``v op b`` exercises ``skill`` and stays in range, or None if infeasible."""
    op = OP_OF_SKILL[skill]
    for _ in range(tries):
        if op == "+":
            if v >= max_value:
                return None
            b = rng.randint(1, max_value - v)
            ok = has_carry(v, b) == (skill == "add-carry")
        elif op == "-":
            if v < 1:
                return None
            b = rng.randint(1, v)
            ok = has_borrow(v, b) == (skill == "sub-borrow")
        elif op == "*":
            b = rng.randint(2, 9) if skill == "mul-1digit" else rng.randint(10, 99)
            ok = 0 < v and v * b <= max_value
        elif op == "/":
            b = rng.randint(2, 12)
            ok = v > 0 and v % b == 0 and v // b > 0
        elif op == "%":
            b = rng.randint(3, 19)
            ok = v >= b
        else:  # max
            b = rng.randint(0, max_value)
            ok = b != v
        if ok:
            return b
    return None


@functools.cache
def feasible_operands(v: int, skill: str, max_value: int = MAX_VALUE) -> tuple[int, ...]:
    """Every operand b of ``sample_operand``'s proposal range for which ``v op b`` exercises ``skill`` in range.

    Drawing uniformly from this tuple is ``sample_operand`` conditioned on success, without its 40 rejection tries.
    """
    op = OP_OF_SKILL[skill]
    if op == "+":
        cands = [b for b in range(1, max_value - v + 1) if has_carry(v, b) == (skill == "add-carry")]
    elif op == "-":
        cands = [b for b in range(1, v + 1) if has_borrow(v, b) == (skill == "sub-borrow")]
    elif op == "*":
        rng_b = range(2, 10) if skill == "mul-1digit" else range(10, 100)
        cands = [b for b in rng_b if 0 < v and v * b <= max_value]
    elif op == "/":
        cands = [b for b in range(2, 13) if v > 0 and v % b == 0 and v // b > 0]
    elif op == "%":
        cands = [b for b in range(3, 20) if v >= b]
    else:
        cands = [b for b in range(0, max_value + 1) if b != v]
    return tuple(cands)


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (operator, operand) per step

    @property
    def question(self) -> str:
        return str(self.start) + "".join(f"{op}{b}" for op, b in self.ops) + "?"

    def values(self) -> list[int]:
        vals = [self.start]
        for op, b in self.ops:
            vals.append(apply_op(vals[-1], op, b))
        return vals

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def step_lines(self) -> list[str]:
        vals = self.values()
        return [f"{vals[i]}{op}{b}={vals[i + 1]}" for i, (op, b) in enumerate(self.ops)] + [f"#{vals[-1]}"]

    @property
    def solution(self) -> str:
        return ";".join(self.step_lines())

    @property
    def skills(self) -> list[str]:
        """Skill of each step, in order (the answer line has none)."""
        vals = self.values()
        return [skill_of(vals[i], op, b) for i, (op, b) in enumerate(self.ops)]

    @property
    def text(self) -> str:
        return self.question + self.solution


CHAIN_RE = re.compile(r"\d{1,3}(?:[-+*/%M]\d{1,3})+\?")


def readable_item(question: str, solution: str | None = None, context: int = 64, max_value: int = 999) -> bool:
    """True when the student can train on (question, solution): a well-formed chain whose values stay in
    [0, max_value] and a solution in the student's alphabet that fits the context. An LLM teacher may write anything.
    """
    if not CHAIN_RE.fullmatch(question):
        return False
    try:
        vals = parse_question(question).values()
    except (ValueError, ZeroDivisionError):
        return False
    if any(v < 0 or v > max_value for v in vals):
        return False
    if solution is None:
        return True
    return all(c in VOCAB for c in solution) and len(question) + len(solution) + 1 <= context


def parse_question(question: str) -> Problem:
    """Inverse of ``Problem.question``."""
    q = question.rstrip("?")
    num, ops, cur_op = "", [], None
    start = None
    for ch in q:
        if ch.isdigit():
            num += ch
        else:
            if cur_op is None:
                start = int(num)
            else:
                ops.append((cur_op, int(num)))
            cur_op, num = ch, ""
    if cur_op is None:
        start = int(num)
    else:
        ops.append((cur_op, int(num)))
    return Problem(start, tuple(ops))


def is_reserved(question: str, frac: float, salt: str = "stat-eval") -> bool:
    """True when the question belongs to the evaluation share ``frac`` of the question space (hash of the text)."""
    h = int.from_bytes(hashlib.blake2b((salt + question).encode(), digest_size=8).digest(), "big")
    return h < frac * 2.0**64


class Reserve:
    """Container view of the hash reservation for ``Generator(exclude=...)``.

    ``q in Reserve(frac)`` is True for reserved (evaluation) questions, so a training generator never emits them;
    with ``invert=True`` it is True for every *non*-reserved question, so an evaluation generator emits only reserved
    ones. ``extra`` adds a plain set of excluded strings (used to keep evaluation sets disjoint from each other).
    """

    def __init__(self, frac: float, salt: str = "stat-eval", invert: bool = False, extra: set[str] | None = None):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"reserve fraction must be in (0, 1), got {frac}")
        self.frac, self.salt, self.invert = frac, salt, invert
        self.extra = extra if extra is not None else set()

    def __contains__(self, question: str) -> bool:
        return is_reserved(question, self.frac, self.salt) != self.invert or question in self.extra

    def add(self, question: str) -> None:
        self.extra.add(question)


def skill_weights(active: tuple[str, ...] | list[str], rare: dict[str, float] | None = None) -> dict[str, float]:
    """Nominal step weights: every active skill 1, the rare ones their given weight (skills not active: 0)."""
    rare = rare or {}
    return {s: (rare.get(s, 1.0) if s in active else 0.0) for s in SKILLS}


def step_shares(gen: Generator, n: int, rng: random.Random) -> dict[str, float]:
    """Measured share of training steps per skill over ``n`` sampled chains."""
    c = Counter()
    for _ in range(n):
        c.update(gen.sample(rng).skills)
    total = sum(c.values())
    return {s: c.get(s, 0) / total for s in SKILLS}


def calibrate_weights(
    active,
    targets: dict[str, float],
    n_ops=(2, 3),
    max_value: int = MAX_VALUE,
    n: int = 40000,
    iters: int = 3,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, float]]:
    """Nominal weights whose measured step share of each skill in ``targets`` is close to its target.

    Multiplicative fixed-point updates w_s <- w_s * target_s / measured_s (the common skills keep weight 1).
    Returns (weights, measured shares of the last check).
    """
    rare = {s: t for s, t in targets.items()}
    shares: dict[str, float] = {}
    for _ in range(iters):
        gen = Generator(skill_weights(active, rare), n_ops=n_ops, max_value=max_value, exact=True)
        shares = step_shares(gen, n, random.Random(seed))
        rare = {s: rare[s] * t / max(shares[s], 1e-6) for s, t in targets.items()}
    weights = skill_weights(active, rare)
    shares = step_shares(Generator(weights, n_ops=n_ops, max_value=max_value, exact=True), n, random.Random(seed + 1))
    return weights, shares


class Generator:
    """Samples problems from the natural distribution P or conditioned to contain given skills.

    ``weights`` maps skill -> relative frequency of a step; ``n_ops`` the allowed chain lengths;
    ``exclude`` a set of question strings never to emit (the held-out evaluation sets).
    """

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        n_ops=(2, 3, 4),
        exclude: set[str] | None = None,
        max_value: int = MAX_VALUE,
        exact: bool = False,
    ):
        self.exact = exact
        self.weights = {k: v for k, v in (weights or NATURAL_WEIGHTS).items() if v > 0}
        self.n_ops = tuple(n_ops)
        self.exclude = exclude if exclude is not None else set()
        self.max_value = max_value

    def _step_skill(self, rng: random.Random) -> str:
        names = list(self.weights)
        return rng.choices(names, weights=[self.weights[n] for n in names])[0]

    def _accept(self, start: int, ops: list, n: int) -> Problem | None:
        """The problem of a finished chain; None when the chain stopped short of ``n`` steps or is excluded."""
        if len(ops) < n:
            return None
        p = Problem(start, tuple(ops))
        return None if p.question in self.exclude else p

    def _sample_exact(self, rng: random.Random, must_have: str | None, n_ops: int | None) -> Problem:
        """``sample`` with exact feasibility: each step's skill is drawn by weight among the skills feasible at the
        current value, and its operand uniformly among the feasible ones (no rejection tries that can fail)."""
        names = list(self.weights)
        for _ in range(10000):
            n = n_ops or rng.choice(self.n_ops)
            forced = rng.randrange(n) if must_have else -1
            start = rng.randint(2, self.max_value)
            v, ops = start, []
            for i in range(n):
                if i == forced:
                    skill = must_have
                    cands = feasible_operands(v, skill, self.max_value)
                else:
                    opts = [(s, feasible_operands(v, s, self.max_value)) for s in names]
                    opts = [(s, c) for s, c in opts if c]
                    if not opts:
                        break
                    skill, cands = rng.choices(opts, weights=[self.weights[s] for s, _ in opts])[0]
                if not cands:
                    break
                b = rng.choice(cands)
                ops.append((OP_OF_SKILL[skill], b))
                v = apply_op(v, OP_OF_SKILL[skill], b)
            if (p := self._accept(start, ops, n)) is not None:
                return p
        raise RuntimeError(f"could not sample a problem with skill {must_have!r}")

    def sample(self, rng: random.Random, must_have: str | None = None, n_ops: int | None = None) -> Problem:
        """One problem; with ``must_have`` one random step is forced to exercise that skill."""
        if self.exact:
            return self._sample_exact(rng, must_have, n_ops)
        for _ in range(1000):
            n = n_ops or rng.choice(self.n_ops)
            forced = rng.randrange(n) if must_have else -1
            start = rng.randint(2, self.max_value)
            v, ops = start, []
            for i in range(n):
                b = None
                for _ in range(30):
                    skill = must_have if i == forced else self._step_skill(rng)
                    b = sample_operand(v, skill, rng, self.max_value)
                    if b is not None:
                        break
                if b is None:
                    break
                ops.append((OP_OF_SKILL[skill], b))
                v = apply_op(v, OP_OF_SKILL[skill], b)
            if (p := self._accept(start, ops, n)) is not None:
                return p
        raise RuntimeError(f"could not sample a problem with skill {must_have!r}")

    def sample_many(self, n: int, rng: random.Random, must_have: str | None = None, unique: bool = False) -> list:
        out, seen = [], set()
        while len(out) < n:
            p = self.sample(rng, must_have=must_have)
            if unique and p.question in seen:
                continue
            seen.add(p.question)
            out.append(p)
        return out
