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
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
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
        catalogue: tuple[str, ...] = SKILLS,
    ):
        self.catalogue = tuple(catalogue)  # the skills a noisy label may name (the task's active skills)
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
                others = [x for x in skills if x != s] or [x for x in self.catalogue if x != s]
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


class TeacherAPIError(RuntimeError):
    """The teacher endpoint failed for good: a non-retryable HTTP status (4xx except 429) or retries exhausted."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Reply:
    """One chat completion: ``text`` is None when the server sent ``content: null``."""

    text: str | None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def complete(self) -> bool:
        """Usable as an answer (and cacheable): content present and not cut at max_tokens."""
        return self.text is not None and self.finish_reason != "length"


class ChatBackend(Protocol):
    def chat(self, messages: list[dict], model: str, temperature: float, max_tokens: int) -> Reply: ...


# USD per 1M (input, output) tokens; a model not listed is logged with cost 0 (set ``prices`` for others).
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}


class Usage:
    """Thread-safe token and cost ledger of a backend; optionally appends one JSON line per call to ``log_path``."""

    def __init__(self, log_path: str | Path | None = None, prices: dict | None = None):
        self.log_path = Path(log_path) if log_path else None
        self.prices = dict(PRICES_PER_MTOK if prices is None else prices)
        self.totals: Counter = Counter()
        self.lock = threading.Lock()

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        pin, pout = self.prices.get(model, (0.0, 0.0))
        return (prompt_tokens * pin + completion_tokens * pout) / 1e6

    def add(self, model: str, reply: Reply, attempts: int, seconds: float) -> None:
        cost = self.cost(model, reply.prompt_tokens, reply.completion_tokens)
        with self.lock:
            self.totals["calls"] += 1
            self.totals["prompt_tokens"] += reply.prompt_tokens
            self.totals["completion_tokens"] += reply.completion_tokens
            self.totals["retries"] += attempts - 1
            self.totals["cost_usd"] += cost
            if self.log_path:
                row = {
                    "model": model,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "cost_usd": round(cost, 8),
                    "finish_reason": reply.finish_reason,
                    "null_content": reply.text is None,
                    "attempts": attempts,
                    "seconds": round(seconds, 3),
                }
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")

    def summary(self) -> dict:
        with self.lock:
            return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.totals.items()}


def retry_after_seconds(value: str | None) -> float | None:
    """The Retry-After header as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class OpenAIChat:
    """Client for an OpenAI-compatible ``POST {base_url}/chat/completions`` (stdlib HTTP, no SDK needed).

    Retries: HTTP 429 and 5xx, connection errors, timeouts and unreadable bodies, up to ``max_retries`` times, with
    exponential back-off (``backoff`` x 2^k, capped at ``max_backoff``, with jitter) or the server's ``Retry-After``
    when it sends one. Other 4xx statuses (bad request, auth, not found) raise ``TeacherAPIError`` at once. Tokens
    and cost of every call go to ``usage`` (a ``Usage`` ledger).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        usage: Usage | None = None,
        sleep=time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.usage = usage or Usage()
        self.sleep = sleep

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)

    def chat(self, messages: list[dict], model: str, temperature: float = 0.0, max_tokens: int = 1024) -> Reply:
        body = json.dumps(
            {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        t0 = time.time()
        last = ""
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode())
                choice = data["choices"][0]
                usage = data.get("usage") or {}
                reply = Reply(
                    text=(choice.get("message") or {}).get("content"),
                    finish_reason=choice.get("finish_reason") or "stop",
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
                self.usage.add(model, reply, attempt + 1, time.time() - t0)
                return reply
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300] if e.fp else ""
                if 400 <= e.code < 500 and e.code != 429:
                    raise TeacherAPIError(
                        f"teacher endpoint {self.base_url}: HTTP {e.code}: {detail}", e.code
                    ) from None
                last = f"HTTP {e.code}: {detail}"
                retry_after = retry_after_seconds(e.headers.get("Retry-After") if e.headers else None)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
            except (KeyError, IndexError, TypeError, ValueError) as e:  # unreadable body (json errors are ValueError)
                last = f"unreadable response: {type(e).__name__}: {e}"
            if attempt < self.max_retries:
                self.sleep(self._delay(attempt, retry_after))
        raise TeacherAPIError(f"teacher endpoint {self.base_url} failed after {self.max_retries + 1} attempts: {last}")


class HFChat:
    """A local transformers instruct model as the teacher (an offline substitute for GPT-4o-mini).

    Loads in bf16 on the GPU when one is available (float32 on CPU) and generates from the chat template;
    ``finish_reason`` is "length" when generation stopped at ``max_tokens`` without an end-of-sequence token.
    """

    def __init__(self, model_name: str, device: str | None = None, dtype=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tok = AutoTokenizer.from_pretrained(model_name)
        self.model = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype).to(self.device)
        self.model.eval()
        self.lock = threading.Lock()  # one generate at a time on a shared model
        self.usage = Usage(prices={})

    def chat(self, messages: list[dict], model: str = "", temperature: float = 0.0, max_tokens: int = 1024) -> Reply:
        import torch

        enc = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = enc["input_ids"].to(self.device)
        mask = enc.get("attention_mask")
        mask = mask.to(self.device) if mask is not None else torch.ones_like(ids)
        eos = self.tok.eos_token_id
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else eos
        t0 = time.time()
        with self.lock, torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
        new = out[0, ids.shape[1] :].tolist()
        ended = eos is not None and eos in new
        reply = Reply(
            text=self.tok.decode(new, skip_special_tokens=True),
            finish_reason="stop" if ended or len(new) < max_tokens else "length",
            prompt_tokens=int(ids.shape[1]),
            completion_tokens=len(new),
        )
        self.usage.add(model, reply, 1, time.time() - t0)
        return reply


class CallCache:
    """key -> response, appended as JSON lines; thread-safe and crash-tolerant.

    Loading skips a torn or corrupt line (a crash mid-write) instead of failing, and the next append first ends such
    a line, so one bad line never loses the rest of the file. Each entry is written with one ``write`` call on an
    append-mode file and flushed, so several processes can share one cache file.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.table: dict[str, str] = {}
        self.lock = threading.Lock()
        self.skipped_lines = 0
        if self.path and self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self.table[row["key"]] = row["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped_lines += 1

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self.table.get(key)

    def __len__(self) -> int:
        return len(self.table)

    def put(self, key: str, response: str) -> None:
        with self.lock:
            self.table[key] = response
            if not self.path:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"key": key, "response": response}) + "\n"
            with open(self.path, "ab+") as f:
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a torn last line: end it so this entry stays readable
                        line = "\n" + line
                f.write(line.encode())
                f.flush()


def parallel_map(fn, items, workers: int = 1) -> list:
    """``[fn(x) for x in items]`` with up to ``workers`` threads; results keep the input order."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


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
        concurrency: int = 1,
        max_tokens: int = 1024,
        solve_hint: str = "",
    ):
        self.backend = backend
        self.skills_by_subject = skills_by_subject
        self.model = model
        self.synthesis_model = synthesis_model or model
        self.cache = cache if cache is not None else CallCache(None)
        self.solve_temperature = solve_temperature
        self.concurrency = concurrency  # pipeline stages run up to this many teacher calls at once
        self.max_tokens = max_tokens
        self.solve_hint = solve_hint  # appended to the solve prompt (e.g. the arithmetic chains' answer format)
        self.stats: Counter = Counter()
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def usage(self) -> dict:
        """Call statistics (calls, cache hits, null / truncated replies) and the backend's token and cost ledger."""
        out = dict(self.stats)
        ledger = getattr(self.backend, "usage", None)
        if isinstance(ledger, Usage):
            out.update({f"api_{k}": v for k, v in ledger.summary().items()})
        return out

    def _skills(self, subject: str) -> list[str]:
        if subject in self.skills_by_subject:
            return self.skills_by_subject[subject]
        return sorted({s for v in self.skills_by_subject.values() for s in v})

    def _ask(self, prompt: str, model: str, temperature: float = 0.0, sample: int = 0) -> str:
        """The teacher's reply, from the shared cache (key: model, messages, temperature, sample index) or the API.

        A reply with ``content: null`` or cut at max_tokens (``finish_reason == "length"``) is not an answer: it is
        counted, returned as "" (the callers read no tags from it) and never cached, so a later run asks again.
        """
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        key = CallCache.key(model, messages, temperature, sample)
        hit = self.cache.get(key)
        if hit is not None:
            self._count("cache_hits")
            return hit
        reply = self.backend.chat(messages, model=model, temperature=temperature, max_tokens=self.max_tokens)
        if isinstance(reply, str):  # a plain-text backend
            reply = Reply(reply)
        self._count("calls")
        if reply.text is None:
            self._count("null_content")
            return ""
        if reply.finish_reason == "length":
            self._count("truncated")
            return ""
        self.cache.put(key, reply.text)
        return reply.text

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
            self._ask(SOLVE_PROMPT.format(question=question) + self.solve_hint, self.model, self.solve_temperature, i)
            for i in range(n)
        ]


def llm_teacher(cfg, skills_by_subject: dict[str, list[str]], solve_hint: str = "") -> LLMTeacher:
    """The configured LLM teacher (``teacher`` = openai or hf) with the shared call cache."""
    if cfg.teacher == "openai":
        log = Path(cfg.out_dir) / "stat" / "teacher_usage.jsonl"
        backend = OpenAIChat(cfg.teacher_url, max_retries=cfg.teacher_max_retries, usage=Usage(log))
    else:
        backend = HFChat(cfg.teacher_model)
    cache = CallCache(cfg.teacher_cache or Path(cfg.out_dir) / "stat" / "teacher_cache.jsonl")
    return LLMTeacher(
        backend,
        skills_by_subject,
        cfg.teacher_model,
        cfg.synthesis_model,
        cache,
        concurrency=cfg.teacher_concurrency if cfg.teacher == "openai" else 1,
        solve_hint=solve_hint,
    )


def majority_agreement(solutions: list[str], answer_of=final_answer) -> tuple[str | None, list[str]]:
    """(majority final answer, the solutions that give it); answers that cannot be read never count."""
    answers = [answer_of(s) for s in solutions]
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, []
    best, _ = counts.most_common(1)[0]
    return best, [s for s, a in zip(solutions, answers) if a == best]
