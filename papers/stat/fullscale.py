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

Left out: QLoRA's paged 8-bit AdamW (plain AdamW here; ``load_in_4bit`` gives NF4 weights when bitsandbytes is
installed), group-by-length batching, MATH² and MATH-Perturb (Hub ids unconfirmed), GRPO, pass@64 / avg@64.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time

import torch

from common.checkpoint import atomic_write_json, atomic_write_text
from common.launch import peak_memory_mb, start
from common.results import make_record, write_record
from papers.stat.mathtext import CHECKER_VERSION, is_equiv, last_boxed
from papers.stat.pipeline import (
    build_skill_map,
    embed_sel,
    fill_budget,
    is_difficult,
    missing_skill_profile,
    stat_sel,
    stat_syn,
)
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
EVAL_SETS = {  # name -> (hub id, config, split, question field, answer field); ids as listed in the sheet
    "math500": ("HuggingFaceH4/MATH-500", None, "test", "problem", "answer"),
    "gsm8k": ("openai/gsm8k", "main", "test", "question", "answer"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train", "problem", "answer"),
    "aime25": ("math-ai/aime25", None, "test", "problem", "answer"),
    "amc23": ("AI-MO/aimo-validation-amc", None, "train", "problem", "answer"),
}
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


def load_causal_lm(cfg, name: str, trainable: bool):
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
        return model, tok
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kw = {"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}
    if cfg.load_in_4bit and trainable:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    model = AutoModelForCausalLM.from_pretrained(name, **kw)
    if trainable and not cfg.load_in_4bit:
        model = model.float()  # trainable weights stay fp32 (ARCHITECTURE rule 9); bf16 autocast in the forward
    return model, tok


def add_lora(cfg, model):
    """LoRA on attention + MLP projections (App. B: r 16, alpha 32, dropout 0.05)."""
    from peft import LoraConfig, get_peft_model

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
def generate(cfg, model, tok, questions: list[str], device, batch_size: int = 8) -> list[str]:
    """0-shot answers; temperature cfg.temperature (paper: 0.1), left-padded batches."""
    model.eval()
    tok.padding_side = "left"
    out = []
    for k in range(0, len(questions), batch_size):
        prompts = [
            tok.apply_chat_template(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for q in questions[k : k + batch_size]
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.temperature > 0,
            temperature=cfg.temperature if cfg.temperature > 0 else None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
        )
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


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
    val = [test[i] for i in idx[: cfg.n_val]]
    held = [test[i] for i in idx[cfg.n_val :]]
    atomic_write_json(
        {"dataset": cfg.math_dataset, "seed": cfg.math_split_seed, "val_idx": idx[: cfg.n_val]},
        run.path("math_split.json"),
    )
    return train, val, held


def load_eval_sets(cfg, held: list[dict]) -> dict[str, list[tuple[str, str]]]:
    names = [n.strip() for n in cfg.eval_sets.split(",") if n.strip()]
    sets = {}
    for name in names:
        if cfg.tiny_random:
            items = [(r["problem"], r["answer"]) for r in held]
        elif name == "math_test":
            items = [(r["problem"], r["answer"]) for r in held]
        else:
            from datasets import load_dataset

            hub, conf, split, qf, af = EVAL_SETS[name]
            ds = load_dataset(hub, conf, split=split)
            items = [(r[qf], str(r[af]).split("####")[-1].strip()) for r in ds]
        sets[name] = items[: cfg.eval_limit] if cfg.eval_limit else items
    return sets


# ------------------------------------------------------------------------------------------------ pipeline


def make_teacher(cfg, run):
    if cfg.teacher == "oracle":  # smoke twin: the chains' oracle behind text adapters
        from papers.stat.teacher import OracleTeacher

        return _TextOracle(OracleTeacher(cfg.label_noise, cfg.teacher_error, cfg.max_missing, cfg.seed))
    from papers.stat.teacher import CallCache, HFChat, LLMTeacher, OpenAIChat

    backend = OpenAIChat(cfg.teacher_url) if cfg.teacher == "openai" else HFChat(cfg.teacher_model)
    cache = CallCache(cfg.teacher_cache or run.dir / "teacher_cache.jsonl")
    return LLMTeacher(backend, SKILLS_BY_SUBJECT, cfg.teacher_model, cfg.synthesis_model, cache)


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


def build_train_set(cfg, run, train, val_items, val_answers, teacher) -> tuple[list[tuple[str, str]], dict]:
    rng = random.Random(cfg.seed)
    info: dict = {}
    pool_q = [r["problem"] for r in train]
    pairs_of = lambda idx: [(train[i]["problem"], train[i]["solution"]) for i in idx]  # noqa: E731
    if cfg.method == "sft":  # MATH-Train: its 7.5K pairs once (the paper's one exception to the 9.5K budget)
        return pairs_of(range(len(train)))[: cfg.math_budget], info
    if cfg.method == "hard":  # MATH-Hard: levels 4-5
        idx = [i for i, r in enumerate(train) if r.get("level") in ("Level 4", "Level 5")] or list(range(len(train)))
        return fill_budget(pairs_of(idx), cfg.math_budget, rng), info
    # Stage 1: difficult validation questions by PRM rewards (no ground truth)
    prm, prm_tok = load_causal_lm(cfg, cfg.prm_model, trainable=False)
    prm.to(run.device).eval()
    difficult = []
    for r, ans in zip(val_items, val_answers):
        rewards = prm_step_rewards(prm, prm_tok, r["problem"], ans, run.device)
        if is_difficult(rewards, cfg.tau1, cfg.tau2):
            difficult.append((r, ans))
    del prm
    info["difficult_frac"] = len(difficult) / max(1, len(val_items))
    if cfg.method == "embed_sel":
        idx = embed_sel([r["problem"] for r, _ in difficult] or pool_q[:1], pool_q, cfg.embed_k)
        return fill_budget(pairs_of(idx), cfg.math_budget, rng), info
    # Stage 2: Missing-Skill-Profile
    per_q, profile = missing_skill_profile([(r["problem"], a, r.get("type", "")) for r, a in difficult], teacher)
    info["profile"] = dict(profile.most_common())
    # Skill-Map over the training pool (teacher labels, cached)
    skill_map = build_skill_map(pool_q, lambda q: teacher.label_skills(q, _subject_of.get(q, "")))
    atomic_write_json({"per_question": per_q, "profile": info["profile"]}, run.path("profile.json"))
    if cfg.method == "stat_sel":
        idx = stat_sel(per_q, skill_map, cfg.m, rng)
        return fill_budget(pairs_of(idx) or pairs_of(range(len(train))), cfg.math_budget, rng), info
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
    """Plain SFT of the LoRA adapter on the chat-formatted pairs, loss on the answer tokens."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.ft_lr, weight_decay=cfg.weight_decay)
    steps = cfg.ft_epochs * math.ceil(len(items) / cfg.global_batch)
    from papers.stat.train import cosine_lambda

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps, cfg.warmup_frac, floor=0.0))
    model, opt = run.accelerator.prepare(model, opt)
    model.train()
    order = []
    for e in range(cfg.ft_epochs):
        perm = list(range(len(items)))
        random.Random(cfg.seed * 1000 + e).shuffle(perm)
        order += perm
    bar = run.progress(total=steps, desc=f"lora-{cfg.method}")
    for step in range(steps):
        chunk = order[step * cfg.global_batch : (step + 1) * cfg.global_batch]
        chunk = chunk[run.accelerator.process_index :: run.world_size]
        for k in range(0, len(chunk), run.per_device_batch):
            seqs, labs = [], []
            for i in chunk[k : k + run.per_device_batch]:
                p, a = chat_ids(tok, *items[i])
                ids = (p + a)[: cfg.max_seq_len]
                seqs.append(ids)
                labs.append(([-100] * len(p) + a)[: cfg.max_seq_len])
            n = max(map(len, seqs))
            ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in seqs], device=run.device)
            labels = torch.tensor([s + [-100] * (n - len(s)) for s in labs], device=run.device)
            mask = (
                torch.arange(n, device=run.device)[None]
                < torch.tensor([len(s) for s in seqs], device=run.device)[:, None]
            ).long()
            with run.accelerator.accumulate(model), run.accelerator.autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                run.accelerator.backward(loss)
                if run.accelerator.sync_gradients:
                    run.accelerator.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad()
        sched.step()
        bar.update(1)
        if (step + 1) % cfg.log_every == 0:
            run.log(step + 1, loss=loss.item(), lr=sched.get_last_lr()[0])
    bar.close()


def run_math(cfg) -> None:
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    run = start(cfg, PAPER)
    train, val, held = load_math(cfg, run)
    _subject_of.update({r["problem"]: r.get("type", "") for r in train})
    model, tok = load_causal_lm(cfg, cfg.model_name, trainable=True)
    model.to(run.device)
    teacher = make_teacher(cfg, run)
    metrics, info = {}, {}
    if cfg.method != "base":
        needs_val = cfg.method in ("embed_sel", "stat_sel", "stat_syn")
        val_answers = generate(cfg, model, tok, [r["problem"] for r in val], run.device) if needs_val else []
        items, info = build_train_set(cfg, run, train, val, val_answers, teacher)
        atomic_write_text(
            "".join(json.dumps({"question": q, "solution": s}) + "\n" for q, s in items), run.path("train_set.jsonl")
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
    for name, items in load_eval_sets(cfg, held).items():
        answers = generate(cfg, model, tok, [q for q, _ in items], run.device)
        metrics[f"acc/{name}"] = 100 * sum(is_equiv(last_boxed(a), g) for a, (_, g) in zip(answers, items)) / len(items)
    if run.is_main:
        teacher_note = cfg.teacher_model if cfg.teacher != "oracle" else "oracle (smoke twin)"
        rec = make_record(
            paper=PAPER,
            preset=cfg.preset,
            method=cfg.method,
            seed=cfg.seed,
            benchmark="stat / MATH: SFT data construction (Table 3)",
            dataset=cfg.math_dataset if not cfg.tiny_random else "arith chains as text (smoke)",
            metrics=metrics,
            protocol={
                "checker": CHECKER_VERSION,
                "temperature": cfg.temperature,
                "eval_limit": cfg.eval_limit,
                "teacher": teacher_note,
                "prm": cfg.prm_model,
                "budget": cfg.math_budget,
            },
            config=cfg,
            wall_time_s=time.time() - t0,
            peak_memory_mb=peak_memory_mb(),
            extra={"train_set": info},
        )
        print(json.dumps(metrics, indent=1), f"\nrecord: {write_record(rec, cfg.results_dir)}")
    run.finish()


def merge(adapter: str, out: str) -> None:
    """Merge a saved LoRA adapter into its base model and save a plain transformers folder."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    merged = AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    print(f"merged model: {out}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "merge":
        merge(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
