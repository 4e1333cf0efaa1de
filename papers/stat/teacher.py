"""The metacognitive teacher of STAT (Section 3 and App. C of the paper): one interface, three implementations.

``Teacher`` has four calls (project design, after the paper's prompts):
``label_skills(question, subject)`` (Skill-Map; up to five skills), ``missing_skills(question, solution, subject)``
(Missing-Skill-Profile of one wrong answer: ``<judge>``, ``<reason>``, ``<skill>``), ``propose_question(refs,
skill)`` (STAT-Syn: ``<reason>``, ``<draft>``, ``<question>``) and ``solve(question, n)`` (n independent solutions,
final answer in ``\\boxed{}``).

- ``OracleTeacher``: the embedded teacher for the arithmetic chains. It knows every step's skill exactly and
  imitates an imperfect LLM teacher with two knobs: ``label_noise`` (a missing-skill label is replaced by another
  skill of the same problem; the paper reports only 43% overlap between two teachers) and ``error_rate`` (a
  solution contains one arithmetic slip, so that agreement filtering has something to filter).
- ``LLMTeacher``: prompts an LLM with the paper's prompt structure through a ``ChatBackend``:
  ``OpenAIChat`` (any OpenAI-compatible ``/chat/completions`` endpoint, stdlib HTTP only) or ``HFChat`` (a local
  transformers instruct model; results must then say the teacher was substituted). Every call is cached
  (prompt hash -> response, JSON lines) so that profiles and synthetic sets are reproducible and paid once.

Left out: the paper's exact prompt wording (App. C is paraphrased here), retries with back-off beyond one retry.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Protocol

from papers.stat.arith import SKILLS, Generator, Problem, apply_op, parse_question, skill_of


class Teacher(Protocol):
    def label_skills(self, question: str, subject: str = "") -> list[str]: ...

    def missing_skills(self, question: str, solution: str, subject: str = "") -> list[str]: ...

    def propose_question(self, refs: list[str], skill: str) -> str | None: ...

    def solve(self, question: str, n: int = 3) -> list[str]: ...


# ---------------------------------------------------------------------------------------------------------------
# Embedded oracle teacher (arithmetic chains)
# ---------------------------------------------------------------------------------------------------------------


def first_wrong_steps(problem: Problem, solution: str, k: int) -> list[tuple[int, str]]:
    """(index, skill) of the first ``k`` steps the student got wrong *locally*.

    A step is wrong when its line is missing or unreadable, copies the wrong operator, operand or carried value,
    or computes a wrong result from its own inputs; a step that is right given an earlier mistake is not blamed
    (the teacher diagnoses the failed skill, not the propagated error). The skill is that of the operation the
    student actually attempted (its own operands), else the canonical step's skill.
    """
    lines = solution.split(";")
    canon_skills = problem.skills
    wrong, prev = [], problem.start
    for i, (op, b) in enumerate(problem.ops):
        m = re.fullmatch(r"(\d+)([-+*/%M])(\d+)=(\d+)", lines[i]) if i < len(lines) else None
        if m is None:
            wrong.append((i, canon_skills[i]))
            prev = None
            continue
        a, op2, b2, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if op2 != op or b2 != b or (prev is not None and a != prev):
            wrong.append((i, canon_skills[i]))
        elif apply_op(a, op, b) != c:
            wrong.append((i, skill_of(a, op, b)))
        prev = c
    return wrong[:k]


def final_answer(solution: str) -> str | None:
    """The answer after '#' in an arithmetic solution, or inside the last \\boxed{} of a text solution."""
    if "\\boxed" in solution:
        from papers.stat.mathtext import last_boxed

        return last_boxed(solution)
    m = re.search(r"#(\d+)\s*$", solution)
    return m.group(1) if m else None


class OracleTeacher:
    """Programmatic teacher for the embedded chains, with configurable label noise and solution errors."""

    def __init__(
        self,
        label_noise: float = 0.3,
        error_rate: float = 0.15,
        max_missing: int = 3,
        seed: int = 0,
        generator: Generator | None = None,
    ):
        self.label_noise = label_noise
        self.error_rate = error_rate
        self.max_missing = max_missing
        self.rng = random.Random(seed)
        self.generator = generator or Generator()

    def label_skills(self, question: str, subject: str = "") -> list[str]:
        return sorted(set(parse_question(question).skills))

    def missing_skills(self, question: str, solution: str, subject: str = "") -> list[str]:
        """Skills of the first erroneous steps; each label is swapped for another skill of the problem w.p. noise."""
        p = parse_question(question)
        skills = p.skills
        if solution == p.solution:
            return []  # <judge>correct</judge>
        wrong = first_wrong_steps(p, solution, self.max_missing)
        if not wrong:  # every step right but the answer line wrong: blame the last step
            wrong = [(len(skills) - 1, skills[-1])]
        out = []
        for _, s in wrong:
            if self.rng.random() < self.label_noise:
                others = [x for x in skills if x != s] or list(SKILLS)
                s = self.rng.choice(others)
            if s not in out:
                out.append(s)
        return out

    def propose_question(self, refs: list[str], skill: str) -> str | None:
        """A new chain that contains ``skill``, as long as a random reference, and none of the references."""
        n_ops = len(parse_question(self.rng.choice(refs)).ops) if refs else None
        for _ in range(20):
            p = self.generator.sample(self.rng, must_have=skill, n_ops=n_ops)
            if p.question not in refs:
                return p.question
        return None

    def solve(self, question: str, n: int = 3) -> list[str]:
        """``n`` solutions; each has, with probability error_rate, one slip (a result off by a small amount)."""
        p = parse_question(question)
        out = []
        for _ in range(n):
            if self.rng.random() >= self.error_rate:
                out.append(p.solution)
                continue
            vals = [p.start]
            slip = self.rng.randrange(len(p.ops))
            lines = []
            for i, (op, b) in enumerate(p.ops):
                r = apply_op(vals[-1], op, b)
                if i == slip:
                    r = max(0, r + self.rng.choice([-10, -2, -1, 1, 2, 10]))
                lines.append(f"{vals[-1]}{op}{b}={r}")
                vals.append(r)
            out.append(";".join(lines + [f"#{vals[-1]}"]))
        return out


# ---------------------------------------------------------------------------------------------------------------
# LLM teacher (OpenAI-compatible endpoint or a local transformers model)
# ---------------------------------------------------------------------------------------------------------------

SYSTEM = "You are an expert mathematics teacher who diagnoses students' reasoning and writes precise problems."

LABEL_PROMPT = """Here is a {subject} problem and a list of skills.
Pick the skills (at most five) that are needed to solve the problem, using only names from the list.

Skills: {skills}

Problem: {question}

Answer with the chosen skills, comma-separated, inside <skill></skill>."""

MISSING_PROMPT = """You are given a {subject} problem, a list of skills, and a student's step-by-step solution.
Decide whether the solution is correct. If it is not, explain why, and list the skill(s) from the list that the
student should strengthen to solve this problem.

Skills: {skills}

Problem: {question}

Student solution:
{solution}

Answer in exactly this format:
<judge>correct or incorrect</judge>
<reason>why the solution is wrong</reason>
<skill>comma-separated skills from the list</skill>"""

PROPOSE_PROMPT = """Here are reference problems with solutions that exercise the skill "{skill}".

{refs}

Write one NEW problem that emphasises the skill "{skill}", of similar difficulty to the references. It must not be
a trivial variation of a reference (no renaming of variables or swapping of numbers) and must have one
well-defined final answer.

Answer in exactly this format:
<reason>how the references use the skill</reason>
<draft>your plan for the new problem</draft>
<question>the new problem</question>"""

SOLVE_PROMPT = """Solve the following problem step by step. Put the final answer in \\boxed{{}}.

Problem: {question}"""


def tag(text: str, name: str) -> str | None:
    """Content of the last <name>...</name> in text (tolerates a missing closing tag at the end)."""
    found = re.findall(rf"<{name}>(.*?)</{name}>", text, flags=re.S)
    if found:
        return found[-1].strip()
    m = re.search(rf"<{name}>(.*)$", text, flags=re.S)
    return m.group(1).strip() if m else None


def match_skills(text: str | None, catalogue: list[str]) -> list[str]:
    """Map the teacher's comma-separated skill names onto the catalogue (case/punctuation-insensitive)."""
    if not text:
        return []
    norm = lambda s: re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()  # noqa: E731
    by_norm = {norm(s): s for s in catalogue}
    out = []
    for part in re.split(r"[,\n;]", text):
        key = norm(part)
        if not key:
            continue
        hit = by_norm.get(key) or next((s for k, s in by_norm.items() if key in k or k in key), None)
        if hit and hit not in out:
            out.append(hit)
    return out


class ChatBackend(Protocol):
    def chat(self, messages: list[dict], model: str, temperature: float, max_tokens: int) -> str: ...


class OpenAIChat:
    """Minimal client for an OpenAI-compatible ``POST {base_url}/chat/completions`` (stdlib only)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout = timeout

    def chat(self, messages: list[dict], model: str, temperature: float = 0.0, max_tokens: int = 1024) -> str:
        body = json.dumps(
            {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        last = None
        for _ in range(2):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode())
                return data["choices"][0]["message"]["content"]
            except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as e:
                last = e
        raise RuntimeError(f"teacher endpoint {self.base_url} failed: {last}")


class HFChat:
    """A local transformers instruct model as the teacher (an offline substitute for GPT-4o-mini)."""

    def __init__(self, model_name: str, device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_name)
        self.model = AutoModelForCausalLM.from_pretrained(model_name)
        if device:
            self.model.to(device)
        self.model.eval()

    def chat(self, messages: list[dict], model: str = "", temperature: float = 0.0, max_tokens: int = 1024) -> str:
        import torch

        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids.to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                ids,
                max_new_tokens=max_tokens,
                do_sample=temperature > 0,
                temperature=temperature or None,
                pad_token_id=self.tok.eos_token_id,
            )
        return self.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


class CallCache:
    """prompt hash -> response, appended as JSON lines (thread-safe)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.table: dict[str, str] = {}
        self.lock = threading.Lock()
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.table[row["key"]] = row["response"]

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self.table.get(key)

    def put(self, key: str, response: str) -> None:
        with self.lock:
            self.table[key] = response
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as f:
                    f.write(json.dumps({"key": key, "response": response}) + "\n")


class LLMTeacher:
    """The paper's teacher: an LLM prompted for skill labels, missing skills, new questions and solutions."""

    def __init__(
        self,
        backend: ChatBackend,
        skills_by_subject: dict[str, list[str]],
        model: str = "gpt-4o-mini",
        synthesis_model: str | None = None,
        cache: CallCache | None = None,
        solve_temperature: float = 0.7,
    ):
        self.backend = backend
        self.skills_by_subject = skills_by_subject
        self.model = model
        self.synthesis_model = synthesis_model or model
        self.cache = cache or CallCache(None)
        self.solve_temperature = solve_temperature
        self.stats: Counter = Counter()

    def _skills(self, subject: str) -> list[str]:
        if subject in self.skills_by_subject:
            return self.skills_by_subject[subject]
        return sorted({s for v in self.skills_by_subject.values() for s in v})

    def _ask(self, prompt: str, model: str, temperature: float = 0.0, sample: int = 0, max_tokens: int = 1024) -> str:
        key = CallCache.key(model, prompt, temperature, sample)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        out = self.backend.chat(messages, model=model, temperature=temperature, max_tokens=max_tokens)
        self.stats["calls"] += 1
        self.cache.put(key, out)
        return out

    def label_skills(self, question: str, subject: str = "") -> list[str]:
        skills = self._skills(subject)
        text = self._ask(
            LABEL_PROMPT.format(subject=subject or "math", skills=", ".join(skills), question=question), self.model
        )
        return match_skills(tag(text, "skill"), skills)[:5]

    def missing_skills(self, question: str, solution: str, subject: str = "") -> list[str]:
        skills = self._skills(subject)
        prompt = MISSING_PROMPT.format(
            subject=subject or "math", skills=", ".join(skills), question=question, solution=solution
        )
        text = self._ask(prompt, self.model)
        judge = (tag(text, "judge") or "").lower()
        if judge.startswith("correct"):
            self.stats["judged_correct"] += 1
            return []
        return match_skills(tag(text, "skill"), skills)

    def propose_question(self, refs: list[str], skill: str) -> str | None:
        ref_text = "\n\n".join(f"Reference {i + 1}:\n{r}" for i, r in enumerate(refs))
        text = self._ask(PROPOSE_PROMPT.format(skill=skill, refs=ref_text), self.synthesis_model, temperature=0.7)
        return tag(text, "question")

    def solve(self, question: str, n: int = 3) -> list[str]:
        return [
            self._ask(SOLVE_PROMPT.format(question=question), self.model, self.solve_temperature, sample=i)
            for i in range(n)
        ]


def majority_agreement(solutions: list[str], answer_of=final_answer) -> tuple[str | None, list[str]]:
    """(majority final answer, the solutions that give it); answers that cannot be read never count."""
    answers = [answer_of(s) for s in solutions]
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, []
    best, _ = counts.most_common(1)[0]
    return best, [s for s, a in zip(solutions, answers) if a == best]
