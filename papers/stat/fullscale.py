"""STAT at full scale (preset ``math``): MATH through ``datasets``, a Llama/Qwen student with LoRA (peft), the
RLHFlow process reward model for Stage 1, an LLM teacher for Stages 2-3, evaluation on MATH-500 / MATH 4K split /
GSM8K / AIME24 / AIME25 / AMC23.

    python -m papers.stat.train --preset math --set method=stat_sel model_name=meta-llama/Llama-3.2-3B-Instruct
    python -m papers.stat.train --preset math-smoke          # same code path, tiny random models, no download
    python -m papers.stat.fullscale merge runs/stat/math/stat_sel-seed0/adapter runs/stat/math/stat_sel-seed0/merged

The teacher needs ``OPENAI_API_KEY`` (or ``--set teacher=hf teacher_model=<local instruct model>``, in which case
the results must say the teacher was substituted). Every teacher call is cached in the run folder; the MATH
val/test split, Skill-Map, profile and training set are saved there as JSON artefacts.

The smoke twin replaces MATH by arithmetic chains phrased as MATH-style text (subject "Prealgebra"), the models by
tiny random Llamas with a character tokenizer, and the teacher by the oracle; everything else is the same code.

QLoRA is the default (App. B): NF4 4-bit base weights and paged 8-bit AdamW, both from bitsandbytes (a CUDA
install; the smoke twin uses plain AdamW on fp32). AIME24 / AIME25 / AMC23 are scored as pass@64 and avg@64 at
T = 1.0 (``k_sets``); AMC23 is the 40 AMC 2023 problems of ``AI-MO/aimo-validation-amc``; the profiling split Q_val
excludes every MATH-500 problem. Fine-tuning resumes from ``<run>/checkpoints`` (adapter weights only).
``python -m papers.stat.fullscale sweep --methods stat_sel sft`` runs the per-method LR grid (``lr_grid_values``).

MATH-Augment (``augment_dataset``, ``TIGER-Lab/MATH-plus``): up to ``answers_per_question`` answers per MATH
training question (its solution plus distinct rewrites); the ``augment`` baseline samples the budget from all of
them, and ``hard``, ``embed_sel`` and ``stat_sel`` attach them to the questions they select. MATH^D is built by
the ``base`` run (the held-out questions the PRM marks difficult for the base's answers) and shared by every
method of its seed. Answers are checked by math-verify (``answer_checker``; ``boxed`` = our normaliser alone).

Left out: group-by-length batching, MATH² and MATH-Perturb (Hub ids unconfirmed), GRPO.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import zlib
from dataclasses import replace

import torch

from common.checkpoint import atomic_write_json, atomic_write_text
from common.config import ConfigError
from common.launch import map_sharded, peak_memory_mb, start
from common.results import make_record, write_record
from papers.stat.mathtext import answers_match, checker_version, last_boxed
from papers.stat.pipeline import (
    build_skill_map,
    embed_sel,
    fill_budget,
    is_difficult,
    missing_skill_profile,
    stat_sel,
    stat_syn,
)
from papers.stat.sft import epoch_order, main_process_only, process_micro_batches, sft_loop
from papers.stat.skills import SKILLS_BY_SUBJECT

PAPER = "stat"
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
EVAL_SETS = {  # name -> (hub id, config, split, question field, answer field); ids of the public copies of each benchmark
    "math500": ("HuggingFaceH4/MATH-500", None, "test", "problem", "answer"),
    "gsm8k": ("openai/gsm8k", "main", "test", "question", "answer"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train", "problem", "answer"),
    "aime25": ("math-ai/aime25", None, "test", "problem", "answer"),
    # AMC 2022 + 2023 (83 problems); only the 40 AMC 2023 problems (url contains "2023") are AMC23
    "amc23": ("AI-MO/aimo-validation-amc", None, "train", "problem", "answer"),
}
EVAL_FILTERS = {"amc23": lambda r: "2023" in str(r.get("url", ""))}
EXPECTED_SIZES = {"math500": 500, "gsm8k": 1319, "aime24": 30, "aime25": 30, "amc23": 40}
SYSTEM_PROMPT = "Solve the problem step by step and put the final answer in \\boxed{}."


# ------------------------------------------------------------------------------------------------ models


def tiny_tokenizer():
    """Character tokenizer over printable ASCII with a chat template (smoke twins only)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    t = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>")
    t.chat_template = (
        "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    return t


WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


def weight_dtype(cfg) -> torch.dtype:
    """The dtype of the frozen weights (student base, PRM): the compute precision of ``mixed_precision``. Only the
    trainable LoRA parameters are fp32 (``add_lora``; ARCHITECTURE rule 9)."""
    return WEIGHT_DTYPES[cfg.mixed_precision]


def load_causal_lm(cfg, name: str, trainable: bool):
    """(model, tokenizer) with every weight in ``weight_dtype(cfg)`` (4-bit NF4 for a QLoRA student)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if cfg.tiny_random:
        tok = tiny_tokenizer()
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=cfg.max_seq_len + cfg.max_new_tokens + 64,
                pad_token_id=0,
                eos_token_id=1,
                bos_token_id=1,
            )
        )
        return model.to(weight_dtype(cfg)), tok
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kw = {"dtype": weight_dtype(cfg)}
    if cfg.load_in_4bit and trainable:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    return AutoModelForCausalLM.from_pretrained(name, **kw), tok


def add_lora(cfg, model):
    """LoRA on attention + MLP projections (App. B: r 16, alpha 32, dropout 0.05)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        ),
    )


def chat_ids(tok, question: str, answer: str | None = None):
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if answer is None:
        return p_ids
    return p_ids, tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


@torch.no_grad()
def generate(
    cfg, model, tok, questions: list[str], run, batch_size: int = 8, temperature: float | None = None, n: int = 1
) -> list[str]:
    """0-shot answers (``n`` per question, consecutive), in the order of ``questions``; temperature cfg.temperature
    by default (paper: 0.1).

    Every process must call it: the batches of ``batch_size`` questions are split between the processes and the
    answers gathered back to every process (``common.launch.map_sharded``). Sampling in a batch is seeded by
    (seed, batch index, first question) under a forked RNG, so the answers do not depend on the number of processes
    and the caller's RNG stream is left as it was."""
    temperature = cfg.temperature if temperature is None else temperature
    model.eval()
    tok.padding_side = "left"
    device = run.device

    def batch(qs: list[str], index: int) -> list[str]:
        prompts = [
            tok.apply_chat_template(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for q in qs
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            torch.manual_seed(zlib.crc32(f"{cfg.seed}\0{index}\0{qs[0]}".encode()))
            gen = model.generate(
                **enc,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                num_return_sequences=n,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
            )
        return tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    return map_sharded(run, questions, batch, chunk=batch_size)


def difficult_by_prm(cfg, run, problems: list[str], answers: list[str]) -> list[bool]:
    """Stage 1 (Sec. 3.1): whether the PRM's step rewards mark each answer difficult (no ground truth); the items are
    split between the processes (every process must call it)."""
    prm, prm_tok = load_causal_lm(cfg, cfg.prm_model, trainable=False)
    prm.to(run.device).eval()

    def score(pairs, _index):
        return [is_difficult(prm_step_rewards(prm, prm_tok, q, a, run.device), cfg.tau1, cfg.tau2) for q, a in pairs]

    return map_sharded(run, list(zip(problems, answers)), score)  # the PRM is freed on return


@torch.no_grad()
def prm_step_rewards(prm, tok, question: str, answer: str, device) -> list[float]:
    """RLHFlow-style PRM: steps split on blank lines, each step a user turn; reward = P('+') / (P('+') + P('-'))
    at the assistant position after the step."""
    steps = [s for s in answer.split("\n\n") if s.strip()] or [answer]
    plus, minus = (tok.encode(x, add_special_tokens=False)[-1] for x in ("+", "-"))
    msgs, rewards = [], []
    for i, s in enumerate(steps):
        msgs.append({"role": "user", "content": (question + " " + s) if i == 0 else s})
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        logits = prm(input_ids=ids.to(device)).logits[0, -1]
        rewards.append(torch.softmax(logits[[plus, minus]].float(), 0)[0].item())
        msgs.append({"role": "assistant", "content": "+"})
    return rewards


# ------------------------------------------------------------------------------------------------ data


def smoke_items(n: int, seed: int) -> list[dict]:
    """Arithmetic chains phrased as MATH items (question, solution with \\boxed, subject, level)."""
    from papers.stat.arith import Generator

    rng = random.Random(seed)
    out = []
    for p in Generator().sample_many(n, rng, unique=True):
        steps = "\n\n".join(p.step_lines()[:-1])
        out.append(
            {
                "problem": f"Evaluate {p.question[:-1]} from left to right.",
                "solution": f"{steps}\n\nThe answer is $\\boxed{{{p.answer}}}$.",
                "answer": str(p.answer),
                "type": "Prealgebra",
                "level": f"Level {len(p.ops)}",
                "chain": p.question,
            }
        )
    return out


def load_math(cfg, run) -> tuple[list[dict], list[dict], list[dict]]:
    """(train P, validation Q_val, test Q_test); the 1K/4K split of MATH test is seeded and saved."""
    if cfg.tiny_random:
        items = smoke_items(3 * cfg.n_val + 40, cfg.seed)
        return items[: 2 * cfg.n_val + 40], items[2 * cfg.n_val + 40 :], items[-4:]
    from datasets import load_dataset

    train, test = [], []
    for subj in MATH_SUBJECTS:
        train += [dict(r) for r in load_dataset(cfg.math_dataset, subj, split="train")]
        test += [dict(r) for r in load_dataset(cfg.math_dataset, subj, split="test")]
    for r in train + test:
        r["answer"] = last_boxed(r["solution"])
    idx = list(range(len(test)))
    random.Random(cfg.math_split_seed).shuffle(idx)
    # MATH-500 is a subset of MATH test: the profiling split Q_val must not contain an item MATH-500 evaluates
    m500 = set()
    if "math500" in cfg.eval_sets:
        hub, conf, split, qf, _ = EVAL_SETS["math500"]
        m500 = {_key(r[qf]) for r in load_dataset(hub, conf, split=split)}
    pool = [i for i in idx if _key(test[i]["problem"]) not in m500]
    val = [test[i] for i in pool[: cfg.n_val]]
    held = [test[i] for i in idx if i not in set(pool[: cfg.n_val])]
    atomic_write_json(
        {
            "dataset": cfg.math_dataset,
            "seed": cfg.math_split_seed,
            "val_idx": pool[: cfg.n_val],
            "math500_excluded_from_val": len(idx) - len(pool),
        },
        run.path("math_split.json"),
    )
    return train, val, held


def _key(text: str) -> str:
    return " ".join(text.split())


def boxed_rewrite(output: str) -> str | None:
    """A MATH-plus answer in the MATH solution format: its closing "The answer is X." (or "The answer is: X")
    becomes ``The answer is $\\boxed{X}$.`` (the evaluator reads the last box). None when the answer has neither a
    box nor such a closing line."""
    text = output.strip()
    if last_boxed(text) is not None:
        return text
    i = text.rfind("The answer is")
    if i < 0:
        return None
    ans = text[i + len("The answer is") :].strip().lstrip(":").strip().removesuffix(".").strip().strip("$").strip()
    if not ans or "\n" in ans:
        return None
    return text[:i].rstrip() + f"\n\nThe answer is $\\boxed{{{ans}}}$."


def augment_pool(rows, train: list[dict], per_question: int) -> dict[str, list[str]]:
    """MATH-Augment: up to ``per_question - 1`` rewritten answers per MATH training question, keyed by ``_key`` of the
    question. ``rows`` carry ``instruction`` (the question) and ``output`` (an answer), as in ``TIGER-Lab/MATH-plus``;
    rows whose question is not a MATH training question (MATH-plus also holds rephrased questions) are ignored, and so
    are answers equal to the MATH solution or to an earlier rewrite."""
    wanted = {_key(r["problem"]): _key(r["solution"]) for r in train}
    pool: dict[str, list[str]] = {}
    for row in rows:
        k = _key(row["instruction"])
        if k not in wanted or len(pool.get(k, [])) >= per_question - 1:
            continue
        ans = boxed_rewrite(row["output"])
        if ans is None or _key(ans) == wanted[k] or _key(ans) in {_key(a) for a in pool.get(k, [])}:
            continue
        pool.setdefault(k, []).append(ans)
    return pool


def load_augment(cfg, train: list[dict]) -> dict[str, list[str]]:
    """The MATH-Augment answers of ``train`` (``augment_dataset``); the smoke twin rewrites each solution's wording."""
    if cfg.answers_per_question <= 1:
        return {}
    if cfg.tiny_random:  # rewrites in the MATH-plus form: other wording, closing line "The answer is X."
        rows = []
        for lead in ("First,", "We compute:"):
            for r in train:
                steps = r["solution"].rsplit("\n\nThe answer is", 1)[0]
                rows.append({"instruction": r["problem"], "output": f"{lead} {steps}\nThe answer is {r['answer']}."})
    else:
        from datasets import load_dataset

        rows = load_dataset(cfg.augment_dataset, split="train").select_columns(["instruction", "output"])
    return augment_pool(rows, train, cfg.answers_per_question)


def load_eval_sets(cfg, held: list[dict]) -> dict[str, list[tuple[str, str]]]:
    names = [n.strip() for n in cfg.eval_sets.split(",") if n.strip()]
    sets = {}
    for name in names:
        if name == "math_d":  # built from the base student's answers by ``math_d_items``
            continue
        if cfg.tiny_random:
            items = [(r["problem"], r["answer"]) for r in held]
        elif name == "math_test":
            items = [(r["problem"], r["answer"]) for r in held]
        else:
            from datasets import load_dataset

            hub, conf, split, qf, af = EVAL_SETS[name]
            keep = EVAL_FILTERS.get(name, lambda r: True)
            ds = [r for r in load_dataset(hub, conf, split=split) if keep(r)]
            items = [(r[qf], str(r[af]).split("####")[-1].strip()) for r in ds]
            if name in EXPECTED_SIZES and len(items) != EXPECTED_SIZES[name]:
                print(f"warning: {name} has {len(items)} items, expected {EXPECTED_SIZES[name]}", file=sys.stderr)
        sets[name] = items[: cfg.eval_limit] if cfg.eval_limit else items
    return sets


# ------------------------------------------------------------------------------------------------ pipeline


def make_teacher(cfg, run):
    if cfg.teacher == "oracle":  # smoke twin: the chains' oracle behind text adapters
        from papers.stat.teacher import OracleTeacher

        return _TextOracle(OracleTeacher(cfg.label_noise, cfg.teacher_error, cfg.max_missing, cfg.seed))
    from papers.stat.teacher import llm_teacher

    return llm_teacher(cfg, SKILLS_BY_SUBJECT)


class _TextOracle:
    """Adapts the arithmetic oracle to MATH-style text items (smoke twin only)."""

    def __init__(self, oracle):
        self.o = oracle

    @staticmethod
    def chain(q: str) -> str:
        return q.removeprefix("Evaluate ").removesuffix(" from left to right.") + "?"

    def label_skills(self, question, subject=""):
        return self.o.label_skills(self.chain(question))

    def missing_skills(self, question, solution, subject=""):
        steps = ";".join(s.strip() for s in solution.split("\n\n")[:-1])
        return self.o.missing_skills(self.chain(question), steps) or ["add-carry"]

    def propose_question(self, refs, skill):
        q = self.o.propose_question([self.chain(r.split("\n")[0]) for r in refs], skill)
        return f"Evaluate {q[:-1]} from left to right." if q else None

    def solve(self, question, n=3):
        sols = [s.split(";") for s in self.o.solve(self.chain(question), n)]
        return ["\n\n".join(x[:-1]) + f"\n\nThe answer is $\\boxed{{{x[-1][1:]}}}$." for x in sols]


def build_train_set(cfg, run, train, val_items, difficult, teacher) -> tuple[list[tuple[str, str]], dict]:
    """Stage 3: the method's training set of exactly ``math_budget`` pairs; ``difficult``: the (item, answer) pairs
    of Q_val that Stage 1 marked difficult (only the selection and synthesis methods use them)."""
    rng = random.Random(cfg.seed)
    info: dict = {}
    pool_q = [r["problem"] for r in train]
    if cfg.method == "sft":  # MATH-Train: its 7.5K pairs once (the paper's one exception to the 9.5K budget)
        return [(r["problem"], r["solution"]) for r in train][: cfg.math_budget], info
    # a selected question comes with its MATH solution and up to answers_per_question - 1 MATH-Augment rewrites
    augment = load_augment(cfg, train) if cfg.method in ("augment", "hard", "embed_sel", "stat_sel") else {}
    if augment:
        sizes = [1 + len(augment.get(_key(q), [])) for q in pool_q]
        info["answers_per_question"] = {
            "mean": sum(sizes) / len(sizes),
            "max": max(sizes),
            "with_rewrites": len(augment),
        }

    def pairs_of(idx) -> list[tuple[str, str]]:
        out = []
        for i in idx:
            q = train[i]["problem"]
            out += [(q, train[i]["solution"])] + [(q, a) for a in augment.get(_key(q), [])]
        return out

    if cfg.method == "augment":  # MATH-Augment: every training question with its answers, sampled to the budget
        return fill_budget(pairs_of(range(len(train))), cfg.math_budget, rng), info
    if cfg.method == "hard":  # MATH-Hard: levels 4-5
        idx = [i for i, r in enumerate(train) if r.get("level") in ("Level 4", "Level 5")] or list(range(len(train)))
        return fill_budget(pairs_of(idx), cfg.math_budget, rng), info
    info["difficult_frac"] = len(difficult) / max(1, len(val_items))
    if cfg.method == "embed_sel":
        idx = embed_sel([r["problem"] for r, _ in difficult] or pool_q[:1], pool_q, cfg.embed_k)
        return fill_budget(pairs_of(idx), cfg.math_budget, rng), info
    # Stage 2: Missing-Skill-Profile
    per_q, profile = missing_skill_profile([(r["problem"], a, r.get("type", "")) for r, a in difficult], teacher)
    info["profile"] = dict(profile.most_common())
    # Skill-Map over the training pool (teacher labels, cached)
    skill_map = build_skill_map(pool_q, lambda q: teacher.label_skills(q, _subject_of.get(q, "")))
    if run.is_main:
        atomic_write_json({"per_question": per_q, "profile": info["profile"]}, run.path("profile.json"))
    if cfg.method == "stat_sel":
        idx = stat_sel(per_q, skill_map, cfg.m, rng)
        return fill_budget(pairs_of(idx) or pairs_of(range(len(train))), cfg.math_budget, rng), info
    if cfg.method != "stat_syn":
        raise ValueError(f"method {cfg.method!r} has no full-scale training set")
    ref_text = lambda i: f"{train[i]['problem']}\nSolution: {train[i]['solution']}"  # noqa: E731
    kept, stats = stat_syn(
        per_q,
        skill_map,
        pool_q,
        teacher,
        rng,
        questions_per_pair=cfg.questions_per_pair,
        n_solutions=cfg.n_solutions,
        min_agree=cfg.min_agree,
        target_unique=cfg.syn_target_unique,
        answer_of=lambda s: (lambda b: None if b is None else _norm(b))(last_boxed(s)),
        ref_text=ref_text,
    )
    info.update(stats)
    return fill_budget(kept or pairs_of(range(len(train))), cfg.math_budget, rng), info


_subject_of: dict[str, str] = {}


def _norm(b: str) -> str:
    from papers.stat.mathtext import normalize

    return normalize(b)


def lora_sft(cfg, run, model, tok, items) -> None:
    """SFT of the LoRA adapter on the chat-formatted pairs, loss on the answer tokens (the shared loop of sft.py:
    resumable from ``<run>/checkpoints``, adapter weights only; paged 8-bit AdamW under QLoRA)."""
    steps = cfg.ft_epochs * math.ceil(len(items) / cfg.global_batch)
    order = epoch_order(len(items), cfg.ft_epochs, cfg.seed * 1000)

    def micro_batches(step):
        return process_micro_batches(order[step * cfg.global_batch : (step + 1) * cfg.global_batch], run)

    def loss_of(m, idx):
        seqs, labs = [], []
        for i in idx:
            p, a = chat_ids(tok, *items[i])
            seqs.append((p + a)[: cfg.max_seq_len])
            labs.append(([-100] * len(p) + a)[: cfg.max_seq_len])
        if all(x == -100 for lab in labs for x in lab[1:]):  # the loss would be 0 / 0
            raise ConfigError(
                f"max_seq_len: {cfg.max_seq_len} tokens cut off every answer of a micro-batch (prompts of "
                f"{min(len(chat_ids(tok, items[i][0])) for i in idx)}+ tokens); raise it"
            )
        n = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in seqs], device=run.device)
        labels = torch.tensor([s + [-100] * (n - len(s)) for s in labs], device=run.device)
        lengths = torch.tensor([len(s) for s in seqs], device=run.device)
        mask = (torch.arange(n, device=run.device)[None] < lengths[:, None]).long()
        return m(input_ids=ids, attention_mask=mask, labels=labels).loss

    sft_loop(
        run,
        cfg,
        model,
        steps,
        cfg.ft_lr,
        run.dir / "checkpoints",
        f"lora-{cfg.method}",
        micro_batches,
        loss_of,
        floor=0.0,
        optim=cfg.optim,
        adapter_only=True,
    )


def run_math(cfg) -> None:
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    rec_preset, rec_method = cfg.preset, cfg.method
    if cfg.lr_grid:  # a sweep run: its own folder and record name
        rec_preset, rec_method = f"{cfg.preset}-lrgrid", f"{cfg.method}@lr={cfg.ft_lr:g}"
        cfg = replace(cfg, run_name=f"{cfg.preset}/lrgrid/{cfg.method}-lr{cfg.ft_lr:g}-seed{cfg.seed}")
    run = start(cfg, PAPER)
    train, val, held = load_math(cfg, run)
    _subject_of.update({r["problem"]: r.get("type", "") for r in train})
    model, tok = load_causal_lm(cfg, cfg.model_name, trainable=True)
    model.to(run.device)
    teacher = make_teacher(cfg, run)
    metrics, info = {}, {}
    if cfg.method != "base":
        needs_val = cfg.method in ("embed_sel", "stat_sel", "stat_syn")

        difficult = []
        if needs_val:  # Stage 1, split between the processes: the base's answers on Q_val, scored by the PRM
            problems = [r["problem"] for r in val]
            answers = generate(cfg, model, tok, problems, run)
            flags = difficult_by_prm(cfg, run, problems, answers)
            difficult = [(r, a) for r, a, hard in zip(val, answers, flags) if hard]
        # teacher and synthesis on the main process only; the result is broadcast
        items, info = main_process_only(run, lambda: build_train_set(cfg, run, train, val, difficult, teacher))
        if run.is_main:
            atomic_write_text(
                "".join(json.dumps({"question": q, "solution": s}) + "\n" for q, s in items),
                run.path("train_set.jsonl"),
            )
        if cfg.tiny_random and run.is_main:  # a random base has no Hub id: save it so the adapter can be merged
            model.save_pretrained(run.path("base_model"))
            tok.save_pretrained(run.path("base_model"))
        model = add_lora(cfg, model)
        if cfg.tiny_random:
            model.peft_config["default"].base_model_name_or_path = str(run.dir / "base_model")
        lora_sft(cfg, run, model, tok, items)
        model = run.accelerator.unwrap_model(model)
        if run.is_main:
            model.save_pretrained(run.path("adapter"))
            tok.save_pretrained(run.path("adapter"))
            atomic_write_text(
                f"python -m papers.stat.fullscale merge {run.dir / 'adapter'} {run.dir / 'merged'}\n",
                run.path("MERGE_COMMAND.txt"),
            )
    k_sets = {x.strip() for x in cfg.k_sets.split(",") if x.strip()}
    eval_sets = load_eval_sets(cfg, held)
    if "math_d" in cfg.eval_sets.split(","):
        eval_sets["math_d"] = math_d_items(cfg, run, model, tok, held)
    for name, items in eval_sets.items():
        if not items:
            print(f"warning: evaluation set {name} is empty; not scored", file=sys.stderr)
            continue
        qs = [q for q, _ in items]
        if name in k_sets:  # paper: AMC23 avg@64, AIME pass@64, T = 1.0
            k = cfg.k_samples
            answers = generate(cfg, model, tok, qs, run, batch_size=1, temperature=cfg.k_temperature, n=k)
            ok = [
                [answers_match(last_boxed(a), g, cfg.answer_checker) for a in answers[i * k : (i + 1) * k]]
                for i, (_, g) in enumerate(items)
            ]
            metrics[f"pass@{k}/{name}"] = 100 * sum(any(x) for x in ok) / len(items)
            metrics[f"avg@{k}/{name}"] = 100 * sum(sum(x) / k for x in ok) / len(items)
            continue
        answers = generate(cfg, model, tok, qs, run)
        hits = [answers_match(last_boxed(a), g, cfg.answer_checker) for a, (_, g) in zip(answers, items)]
        metrics[f"acc/{name}"] = 100 * sum(hits) / len(items)
    if run.is_main:
        teacher_note = teacher_used(cfg)
        rec = make_record(
            paper=PAPER,
            preset=rec_preset,
            method=rec_method,
            seed=cfg.seed,
            benchmark="stat / MATH: SFT data construction (Table 3)" + (" LR sweep" if cfg.lr_grid else ""),
            dataset=cfg.math_dataset if not cfg.tiny_random else "arith chains as text (smoke)",
            metrics=metrics,
            protocol={
                "checker": checker_version(cfg.answer_checker),
                "temperature": cfg.temperature,
                "eval_limit": cfg.eval_limit,
                "teacher": teacher_note,
                "prm": cfg.prm_model,
                "budget": cfg.math_budget,
            },
            config=cfg,
            wall_time_s=time.time() - t0,
            peak_memory_mb=peak_memory_mb(),
            extra={"train_set": info, "teacher_usage": teacher.usage() if hasattr(teacher, "usage") else {}},
        )
        print(json.dumps(metrics, indent=1), f"\nrecord: {write_record(rec, cfg.results_dir)}")
    run.finish()


def math_d_items(cfg, run, model, tok, held: list[dict]) -> list[tuple[str, str]]:
    """MATH^D (Sec. 3.1): the held-out test questions the PRM marks difficult for the *base* student's answers.

    Built once per (preset, seed) by the ``base`` run and saved as ``<out_dir>/stat/<preset>/math_d-seed<k>.json``;
    every method of that seed is then evaluated on the same questions."""
    from pathlib import Path

    path = Path(cfg.out_dir) / PAPER / cfg.preset / f"math_d-seed{cfg.seed}.json"
    if not path.exists():
        if cfg.method != "base":
            raise SystemExit(
                f"error: {path} missing; run --set method=base seed={cfg.seed} first (MATH^D is defined "
                "on the base student's answers)"
            )
        problems = [r["problem"] for r in held]
        answers = generate(cfg, model, tok, problems, run)
        flags = difficult_by_prm(cfg, run, problems, answers)
        hard = [(r["problem"], r["answer"]) for r, flag in zip(held, flags) if flag]
        if run.is_main:
            atomic_write_json({"items": hard, "of": len(held), "prm": cfg.prm_model}, path)
        return hard
    return [tuple(x) for x in json.loads(path.read_text())["items"]]


def teacher_used(cfg) -> str:
    """The teacher actually behind the record (the paper's is GPT-4o-mini / GPT-4o through the OpenAI API)."""
    if cfg.teacher == "oracle":
        return "programmatic oracle (smoke twin; no LLM)"
    if cfg.teacher == "hf":
        return f"local transformers model {cfg.teacher_model} (substituted for the paper's GPT-4o-mini / GPT-4o)"
    return f"{cfg.teacher_model} (labels, profile, solutions) + {cfg.synthesis_model} (synthesis) at {cfg.teacher_url}"


def merge(adapter: str, out: str) -> None:
    """Merge a saved LoRA adapter into its base model and save a plain transformers folder."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    merged = AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    print(f"merged model: {out}")


def sweep(argv=None) -> dict:
    """Per-method LR sweep (App. B: the best of {5e-4, 2e-4, 1e-4, 8e-5, 2e-5} per method, on MATH accuracy).

    Every (method, LR) trains through ``papers.stat.train`` with ``lr_grid=true`` (records ``<preset>-lrgrid``);
    finished runs are skipped. Writes ``<out_dir>/stat/<preset>/lr_sweep.json`` with the best LR per method.
    """
    import argparse
    from pathlib import Path

    from common.config import parse_cli
    from papers.stat.config import PRESETS, Config
    from papers.stat.train import main as train_main

    ap = argparse.ArgumentParser(prog="python -m papers.stat.fullscale sweep", description=sweep.__doc__)
    ap.add_argument("--preset", default="math", choices=[p for p in PRESETS if PRESETS[p].task == "math"])
    ap.add_argument("--methods", nargs="+", default=["sft", "stat_sel", "stat_syn"])
    ap.add_argument("--metric", default="acc/math500", help="selection metric of the records (paper: MATH)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    args = ap.parse_args(argv)
    cfg = parse_cli(
        Config, PRESETS, ["--preset", args.preset, "--set", *args.set] if args.set else ["--preset", args.preset]
    )
    grid = [float(x) for x in cfg.lr_grid_values.split(",") if x.strip()]
    best = {}
    for method in args.methods:
        scores = {}
        for lr in grid:
            path = Path(cfg.results_dir) / PAPER / f"{cfg.preset}-lrgrid" / f"{method}@lr={lr:g}-seed{cfg.seed}.json"
            if not path.exists():
                train_main(
                    ["--preset", args.preset, "--set", *args.set, f"method={method}", f"ft_lr={lr}", "lr_grid=true"]
                )
            scores[lr] = json.loads(path.read_text())["metrics"].get(args.metric, float("nan"))
        best[method] = {"lr": max(scores, key=lambda x: (scores[x], -x)), "scores": scores}
        print(f"[sweep] {method}: " + ", ".join(f"{lr:g} -> {v:.2f}" for lr, v in scores.items()), flush=True)
    out = Path(cfg.out_dir) / PAPER / cfg.preset / "lr_sweep.json"
    atomic_write_json({"metric": args.metric, "best": best}, out)
    print(f"best LR per method: {out}")
    return best


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "merge":
        merge(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "sweep":
        sweep(sys.argv[2:])
    else:
        print(__doc__)
