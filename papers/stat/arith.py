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

Left out: natural-language word problems (reasoning-gym's generators would be a second set).
"""

from __future__ import annotations

import random
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
    ):
        self.weights = dict(weights or NATURAL_WEIGHTS)
        self.n_ops = tuple(n_ops)
        self.exclude = exclude if exclude is not None else set()
        self.max_value = max_value

    def _step_skill(self, rng: random.Random) -> str:
        names = list(self.weights)
        return rng.choices(names, weights=[self.weights[n] for n in names])[0]

    def sample(self, rng: random.Random, must_have: str | None = None, n_ops: int | None = None) -> Problem:
        """One problem; with ``must_have`` one random step is forced to exercise that skill."""
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
            if len(ops) < n:
                continue
            p = Problem(start, tuple(ops))
            if p.question in self.exclude:
                continue
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
