"""Configs and presets for STAT (He, Panigrahi, Lin, Arora 2025, arXiv:2510.10023).

``arith`` (the embedded default, first key) runs the whole pipeline on generated arithmetic chains with a small
GPT-2-style student; ``math`` is the full-scale setting (MATH through ``datasets``, a Llama/Qwen student with LoRA
via peft, an LLM teacher behind an OpenAI-compatible endpoint, the RLHFlow PRM). Every preset has a ``-smoke`` twin
that runs the same code path in seconds on tiny random models.

Methods (``method``): ``base`` (no extra training: the saturated student), ``sft`` (continued plain SFT on fresh
samples of the natural distribution; at full scale MATH-Train), ``augment`` (full scale only: MATH-Augment, the
MATH training questions with 3 answers each), ``hard`` (longest chains only; MATH-Hard), ``embed_sel`` (nearest
neighbours of the difficult validation questions; Embed-Sel), ``stat_sel`` and ``stat_syn``; two controls of the
embedded task: ``stat_sel_shuffled`` (STAT-Sel with the profile permuted across skills: does the diagnosis
matter?) and ``uniform`` (fresh chains with every skill equally frequent: an upper bound that knows which skills the
natural distribution starves). All except ``base`` train on exactly ``budget`` QA pairs.

``arith-rare`` is the claim preset: the rare skills are calibrated to a measured share of training steps, evaluation
questions are reserved by a hash of the question, one base per seed (experiment.py runs the pilot, the gates, the
learning-rate grid and the endpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from common.config import BaseConfig, ConfigError, cfg_field

EVAL_SETS = ("math500", "math_test", "math_d", "gsm8k", "aime24", "aime25", "amc23")  # full scale (task=math)
METHODS = ("base", "sft", "augment", "hard", "embed_sel", "stat_sel", "stat_syn", "stat_sel_shuffled", "uniform")
# the methods each task builds a training set for: augment is the full-scale MATH-Augment baseline; the two controls
# need the chains' exact skill frequencies (embedded only)
TASK_METHODS = {
    "arith": tuple(m for m in METHODS if m != "augment"),
    "math": tuple(m for m in METHODS if m not in ("stat_sel_shuffled", "uniform")),
}


@dataclass(frozen=True)
class Config(BaseConfig):
    task: str = cfg_field(
        "arith", "benchmark: embedded arithmetic chains or MATH (full scale)", choices=("arith", "math")
    )
    method: str = cfg_field("stat_sel", "training-set construction compared", choices=METHODS)
    threads: int = cfg_field(
        1, "torch CPU threads (1 is fastest for this tiny model on a shared 2-core machine)", min=1
    )

    # --- embedded benchmark (task=arith) ---
    max_value: int = cfg_field(99, "largest intermediate value of a chain", min=20)
    skill_mix: str = cfg_field(
        "legacy",
        "natural distribution: legacy (fixed weights, rare = sub-borrow, mul-2digit, mod), calibrated (active skills "
        "equal, each rare skill at rare_share of measured steps) or uniform (every active skill equal; the pilot)",
        choices=("legacy", "calibrated", "uniform"),
    )
    skills_off: str = cfg_field("", "comma-separated skills never generated (calibrated / uniform mixes)")
    rare_skills: str = cfg_field("", "comma-separated rare skills of the calibrated mix")
    rare_share: float = cfg_field(0.004, "measured share of training steps of each rare skill", min=0.0, max=1.0)
    rare_shares: str = cfg_field("", "per-skill overrides of rare_share, e.g. 'sub-borrow=0.004,add-carry=0.002'")
    n_ops: str = cfg_field("2,3,4", "chain lengths (operations) of the natural distribution")
    ood_ops: int = cfg_field(5, "chain length of the out-of-distribution test set", min=1)
    reserve_frac: float = cfg_field(
        0.0,
        "share of the question space reserved for evaluation by a hash of the question; 0 = exclude by string",
        min=0.0,
        max=0.5,
    )
    select_size: int = cfg_field(0, "validation questions for choosing the fine-tuning LR (0 = none)", min=0)
    skill_curve_size: int = cfg_field(0, "per-skill questions checked at every base eval point (0 = off)", min=0)
    pool_size: int = cfg_field(20000, "size of the training pool P that STAT-Sel / Embed-Sel select from", min=10)
    val_size: int = cfg_field(1000, "validation questions the profile is built on (the paper's Q_val: 1K)", min=4)
    test_size: int = cfg_field(1000, "held-out natural-distribution test questions (P-test)", min=4)
    skill_test_size: int = cfg_field(100, "test questions per skill (each contains that skill)", min=2)
    ood_size: int = cfg_field(300, "out-of-distribution test questions (5-step chains)", min=2)
    student_layers: int = cfg_field(3, "GPT-2 student: transformer blocks", min=1)
    student_dim: int = cfg_field(64, "GPT-2 student: model width", min=8)
    student_heads: int = cfg_field(4, "GPT-2 student: attention heads", min=1)
    context: int = cfg_field(64, "GPT-2 student: context length in characters", min=16)
    lr: float = cfg_field(3e-3, "peak learning rate of the base SFT", min=0.0)
    warmup_frac: float = cfg_field(0.03, "linear warm-up fraction of every schedule (paper: 3%)", min=0.0, max=1.0)
    weight_decay: float = cfg_field(0.01, "AdamW weight decay", min=0.0)
    grad_clip: float = cfg_field(1.0, "gradient-norm clip", min=0.0)
    base_seed: int = cfg_field(
        -1, "seed of the base student shared by this run; -1 = this run's seed (one base per seed)", min=-1
    )
    base_preset: str = cfg_field(
        "", "reuse the base student of this preset (same student and base-SFT settings); '' = this preset"
    )
    eval_every: int = cfg_field(500, "base SFT steps between P-val accuracy checks (saturation curve)", min=1)

    # --- Stage 1: difficult questions by process reward (Section 3.1 of the paper) ---
    tau1: float = cfg_field(0.85, "final-step and mean-reward threshold (paper: 0.85)", min=0.0, max=1.0)
    tau2: float = cfg_field(0.7, "intermediate-step threshold (paper: 0.7)", min=0.0, max=1.0)
    prm_noise: float = cfg_field(0.1, "std of Gaussian noise on the step checker's 0/1 rewards (mimics a PRM)", min=0.0)

    # --- Stage 2: Missing-Skill-Profile ---
    teacher: str = cfg_field("oracle", "teacher implementation", choices=("oracle", "openai", "hf"))
    label_noise: float = cfg_field(
        0.3,
        "oracle teacher: probability a missing-skill label is replaced by another skill of the problem",
        min=0.0,
        max=1.0,
    )
    max_missing: int = cfg_field(3, "skills named per wrong answer (first erroneous steps)", min=1)

    # --- Stage 3: STAT-Sel / STAT-Syn ---
    m: int = cfg_field(5, "questions drawn per (question, missing skill) pair (App. B.2 / README: 5; Alg. 1: 3)", min=1)
    questions_per_pair: int = cfg_field(2, "STAT-Syn: new questions per (question, skill) pair per pass", min=1)
    n_solutions: int = cfg_field(3, "STAT-Syn: teacher solutions per synthesised question (paper: 3)", min=1)
    min_agree: int = cfg_field(2, "STAT-Syn: keep a question when this many solutions share the majority answer", min=1)
    teacher_error: float = cfg_field(
        0.15, "oracle teacher: probability a solution contains an arithmetic slip", min=0.0, max=1.0
    )
    syn_target_unique: int = cfg_field(
        0, "STAT-Syn: extra passes until this many unique questions are kept; 0 = one pass", min=0
    )
    syn_dedupe: bool = cfg_field(False, "STAT-Syn: keep each distinct agreeing solution once (no identical copies)")
    syn_max_passes: int = cfg_field(10, "STAT-Syn: most passes over the (question, skill) pairs", min=1)
    embed_k: int = cfg_field(5, "Embed-Sel: nearest training questions per difficult question (paper: 5)", min=1)

    # --- Stage 4: fine-tuning at an equal budget ---
    budget: int = cfg_field(4000, "QA pairs every method trains on (paper: 9.5K)", min=1)
    ft_epochs: int = cfg_field(2, "epochs over the budget (paper: 3)", min=1)
    ft_lr: float = cfg_field(5e-4, "fine-tuning learning rate, identical for every method", min=0.0)
    lr_grid: bool = cfg_field(
        False, "a learning-rate grid run: record <preset>-lrgrid / <method>@lr=<ft_lr>, run folder <preset>/lrgrid/"
    )

    # --- full scale (task=math) ---
    model_name: str = cfg_field("meta-llama/Llama-3.2-3B-Instruct", "student (Hub id or local folder)")
    tiny_random: bool = cfg_field(False, "build tiny random student/PRM from config instead of loading (smoke twins)")
    math_dataset: str = cfg_field("EleutherAI/hendrycks_math", "MATH on the Hub (hendrycks/competition_math is gone)")
    math_split_seed: int = cfg_field(0, "seed of the 1K validation / 4K test split of MATH test (not published)", min=0)
    n_val: int = cfg_field(1000, "MATH validation questions (Q_val)", min=1)
    answer_checker: str = cfg_field(
        "math-verify",
        "full scale: math-verify (LaTeX / sympy verifier) or boxed (our normaliser alone, stat-boxed-v1)",
        choices=("math-verify", "boxed"),
    )
    augment_dataset: str = cfg_field(
        "TIGER-Lab/MATH-plus", "MATH-Augment answer pool: rewritten solutions of the MATH training questions"
    )
    answers_per_question: int = cfg_field(
        3,
        "answers attached to a selected MATH question: its MATH solution plus MATH-Augment rewrites (paper: 3; "
        "1 = MATH solutions only); used by augment, hard, embed_sel and stat_sel",
        min=1,
    )
    eval_sets: str = cfg_field(
        "math500,gsm8k",
        "comma-separated evaluation sets: math500, math_test, math_d (needs the base run), gsm8k, aime24, aime25, amc23",
    )
    eval_limit: int = cfg_field(0, "questions per evaluation set; 0 = all", min=0)
    prm_model: str = cfg_field("RLHFlow/Llama3.1-8B-PRM-Mistral-Data", "process reward model for Stage 1")
    teacher_model: str = cfg_field("gpt-4o-mini", "teacher for skill labels and profiles (Section 3)")
    synthesis_model: str = cfg_field("gpt-4o", "teacher for question synthesis (Alg. 1 names GPT-4o)")
    teacher_url: str = cfg_field("https://api.openai.com/v1", "OpenAI-compatible endpoint of the teacher")
    teacher_cache: str = cfg_field(
        "",
        "JSON-lines cache of teacher calls, shared by every method and seed; '' = <out_dir>/stat/teacher_cache.jsonl",
    )
    teacher_concurrency: int = cfg_field(8, "teacher requests in flight at once (API rate limits)", min=1)
    teacher_max_retries: int = cfg_field(6, "retries of a teacher request on 429 / 5xx / network errors", min=0)
    lora_r: int = cfg_field(16, "LoRA rank (paper: 16)", min=1)
    lora_alpha: int = cfg_field(32, "LoRA alpha (paper: 32)", min=1)
    lora_dropout: float = cfg_field(0.05, "LoRA dropout (paper: 0.05)", min=0.0, max=1.0)
    load_in_4bit: bool = cfg_field(False, "QLoRA: 4-bit NF4 base weights (needs bitsandbytes on a GPU)")
    optim: str = cfg_field(
        "adamw",
        "optimizer: adamw, or paged_adamw_8bit (QLoRA, App. B; needs bitsandbytes)",
        choices=("adamw", "paged_adamw_8bit"),
    )
    max_seq_len: int = cfg_field(2048, "maximum tokens of question + answer (not stated in the paper)", min=16)
    max_new_tokens: int = cfg_field(1024, "generation length for evaluation and profiling", min=1)
    temperature: float = cfg_field(0.1, "decoding temperature for pass@1 (paper: 0.1)", min=0.0)
    k_samples: int = cfg_field(64, "samples per question on AIME / AMC (paper: avg@64 and pass@64)", min=1)
    k_temperature: float = cfg_field(1.0, "decoding temperature of those samples (paper: 1.0)", min=0.0)
    k_sets: str = cfg_field("aime24,aime25,amc23", "evaluation sets scored by pass@k / avg@k instead of pass@1")
    lr_grid_values: str = cfg_field(
        "5e-4,2e-4,1e-4,8e-5,2e-5", "the sweep driver's per-method LR grid (App. B: best of these per method)"
    )
    math_budget: int = cfg_field(9500, "QA pairs every full-scale method trains on (paper: 9.5K)", min=1)

    def check(self) -> None:
        if self.min_agree > self.n_solutions:
            raise ConfigError(f"min_agree: {self.min_agree} exceeds n_solutions {self.n_solutions}")
        if self.tau2 > self.tau1:
            raise ConfigError(f"tau2: {self.tau2} should not exceed tau1 {self.tau1} (paper: 0.7 <= 0.85)")
        if self.student_dim % self.student_heads:
            raise ConfigError(f"student_heads: {self.student_heads} does not divide student_dim {self.student_dim}")
        from papers.stat.arith import SKILLS

        for name in ("skills_off", "rare_skills"):
            bad = [x for x in getattr(self, name).split(",") if x and x not in SKILLS]
            if bad:
                raise ConfigError(f"{name}: unknown skill(s) {bad}; choose from {list(SKILLS)}")
        if self.skill_mix == "calibrated" and not self.rare_skills:
            raise ConfigError("rare_skills: the calibrated mix needs at least one rare skill")
        bad = [x.strip() for x in self.eval_sets.split(",") if x.strip() and x.strip() not in EVAL_SETS]
        if bad:
            raise ConfigError(f"eval_sets: unknown set(s) {bad}; choose from {list(EVAL_SETS)}")
        presets = globals().get("PRESETS")  # None while the presets themselves are being defined
        if self.base_preset and presets is not None and self.base_preset not in presets:
            raise ConfigError(f"base_preset: unknown preset {self.base_preset!r}; choose from {sorted(presets)}")
        if self.method not in TASK_METHODS[self.task]:
            raise ConfigError(
                f"method: {self.method} has no training set for task={self.task}; choose from {list(TASK_METHODS[self.task])}"
            )
        if self.task == "math" and self.teacher == "oracle" and not self.tiny_random:
            raise ConfigError("teacher: the oracle teacher only knows the arithmetic chains; use openai or hf for MATH")


ARITH = Config(
    preset="arith",
    task="arith",
    seed=0,
    steps=2000,  # not in the paper: base SFT sized for 2 cores (see README, saturation check)
    global_batch=64,  # not in the paper: our default
    log_every=100,
    ckpt_every=500,
)

# The claim needs a base that plain SFT has saturated: one long base run (seed 0), shared by the post-training seeds.
ARITH_LONG = replace(
    ARITH,
    preset="arith-long",
    steps=5000,  # not in the paper: 2.5x the default base; whether continued SFT still moves it is checked by the claims
    base_seed=0,
    eval_every=1000,
    ckpt_every=1000,
)

# Same base as arith-long, but the profile is built on 5000 validation questions, so that the number of difficult
# ones (~500 at ~90% base accuracy) matches the paper's ~500 per model (Sec. 3.3) and STAT-Sel / STAT-Syn produce
# enough unique questions for the budget instead of repeating ~100 of them.
ARITH_LONG_V5K = replace(ARITH_LONG, preset="arith-long-v5k", val_size=5000, base_preset="arith-long")

# The redesigned claim (see claims.py): 2-3-step chains without mod (not learnable by this student) and mul-2digit
# (feasible only for values <= 9); three rare skills at a calibrated share of measured training steps; a smaller
# 2 x 64 student so that a pilot, five independent bases, a learning-rate grid and the controls fit ~30 CPU-minutes.
ARITH_RARE = replace(
    ARITH,
    preset="arith-rare",
    skill_mix="calibrated",
    skills_off="mod,mul-2digit",
    rare_skills="sub-borrow,add-carry,div-exact",
    rare_share=0.0035,
    n_ops="2,3",
    ood_ops=4,
    reserve_frac=0.1,
    student_layers=2,
    student_dim=64,
    context=48,
    steps=6000,
    global_batch=64,
    lr=2e-3,
    eval_every=1500,
    ckpt_every=1500,
    skill_curve_size=100,
    pool_size=100000,
    val_size=5000,  # profiling set
    select_size=2000,  # LR selection
    test_size=5000,
    skill_test_size=500,
    ood_size=500,
    budget=8000,
    ft_epochs=2,
    m=10,
    syn_dedupe=True,
    syn_target_unique=4000,
    syn_max_passes=40,
    teacher_error=0.01,  # G5: the teacher solves natural chains clearly better than the saturated bases
    ft_lr=1e-3,  # replaced by the grid choice at seed 0 (experiment.py)
)
# The learnability pilot: every active skill equally frequent, same student and schedule.
ARITH_RARE_PILOT = replace(ARITH_RARE, preset="arith-rare-pilot", skill_mix="uniform")

MATH = Config(
    preset="math",
    task="math",
    teacher="openai",
    load_in_4bit=True,  # App. B: QLoRA, 4-bit NF4 base weights
    optim="paged_adamw_8bit",  # App. B: paged AdamW 8-bit
    model_name="meta-llama/Llama-3.2-3B-Instruct",  # Table 3
    global_batch=8,  # App. B: per-device 2 x gradient accumulation 4
    per_device_batch=2,
    ft_lr=1e-4,  # App. B: best of {5e-4, 2e-4, 1e-4, 8e-5, 2e-5} per method; sweep with --set ft_lr=...
    ft_epochs=3,  # App. B
    weight_decay=0.1,  # App. B
    grad_clip=0.3,  # App. B
    warmup_frac=0.03,  # App. B
    mixed_precision="bf16",
    steps=0,  # derived from math_budget x ft_epochs / global_batch
    log_every=10,
    eval_sets="math500,math_test,math_d,gsm8k,aime24,aime25,amc23",  # math_d: run method=base first
)


def smoke(cfg: Config) -> Config:
    """The smoke twin: same code path, tiny sizes."""
    if cfg.task == "arith":
        return replace(
            cfg,
            base_preset=f"{cfg.base_preset}-smoke" if cfg.base_preset else "",
            preset=f"{cfg.preset}-smoke",
            steps=3,
            global_batch=16,
            pool_size=300,
            val_size=60,
            test_size=40,
            skill_test_size=4,
            ood_size=8,
            student_layers=1,
            student_dim=16,
            student_heads=2,
            budget=48,
            ft_epochs=1,
            select_size=min(cfg.select_size, 20),
            skill_curve_size=min(cfg.skill_curve_size, 4),
            syn_target_unique=min(cfg.syn_target_unique, 16),
            syn_max_passes=min(cfg.syn_max_passes, 5),
            context=min(cfg.context, 64),
            eval_every=2,
            ckpt_every=2,
            log_every=1,
            threads=1,
        )
    return replace(
        cfg,
        preset=f"{cfg.preset}-smoke",
        tiny_random=True,
        teacher="oracle",
        model_name="tiny-random-llama",
        prm_model="tiny-random-llama",
        n_val=6,
        math_budget=12,
        ft_epochs=1,
        global_batch=4,
        per_device_batch=2,
        eval_sets="math500,gsm8k,amc23",
        k_samples=3,
        load_in_4bit=False,
        optim="adamw",
        eval_limit=4,
        max_new_tokens=8,
        max_seq_len=256,  # the chat prompt alone is ~120 character tokens: every answer must fit after it
        mixed_precision="no",
        threads=1,
        log_every=1,
    )


PRESETS: dict[str, Config] = {
    "arith": ARITH,
    "arith-smoke": smoke(ARITH),
    "arith-long": ARITH_LONG,
    "arith-long-smoke": smoke(ARITH_LONG),
    "arith-long-v5k": ARITH_LONG_V5K,
    "arith-long-v5k-smoke": smoke(ARITH_LONG_V5K),
    "arith-rare": ARITH_RARE,
    "arith-rare-smoke": smoke(ARITH_RARE),
    "arith-rare-pilot": ARITH_RARE_PILOT,
    "arith-rare-pilot-smoke": smoke(ARITH_RARE_PILOT),
    "math": MATH,
    "math-smoke": smoke(MATH),
}
