"""STAT: unit tests of the pipeline's pieces (profile, selection weights, agreement filter, teacher client) and
smoke runs of every preset's smoke twin through the real entry point."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from papers.stat.arith import SKILLS, Generator, Problem, has_borrow, has_carry, parse_question, skill_of
from papers.stat.eval import step_rewards
from papers.stat.model import CharCodec, build_student, build_tokenizer, greedy_decode
from papers.stat.pipeline import (
    build_skill_map,
    fill_budget,
    filter_by_agreement,
    is_difficult,
    missing_skill_profile,
    selection_weights,
    stat_sel,
    stat_syn,
)
from papers.stat.teacher import CallCache, LLMTeacher, OpenAIChat, OracleTeacher, match_skills, tag

# --------------------------------------------------------------------------------------------- benchmark


def test_skills_of_steps():
    assert skill_of(37, "+", 48) == "add-carry" and skill_of(31, "+", 48) == "add-no-carry"
    assert skill_of(52, "-", 17) == "sub-borrow" and skill_of(58, "-", 17) == "sub-no-borrow"
    assert skill_of(7, "*", 13) == "mul-2digit" and skill_of(7, "*", 3) == "mul-1digit"
    assert has_carry(5, 5) and not has_carry(41, 58) and has_borrow(10, 1) and not has_borrow(99, 99)
    p = Problem(37, (("+", 48), ("%", 7), ("M", 9)))
    assert p.question == "37+48%7M9?" and p.solution == "37+48=85;85%7=1;1M9=9;#9"
    assert p.skills == ["add-carry", "mod", "max"] and parse_question(p.question) == p


def test_generator_conditioning_and_skew():
    gen, rng = Generator(), random.Random(0)
    for s in SKILLS:
        for _ in range(5):
            p = gen.sample(rng, must_have=s)
            assert s in p.skills and all(0 <= v <= gen.max_value for v in p.values())
    counts = Counter(s for p in gen.sample_many(3000, rng) for s in p.skills)
    total = sum(counts.values())
    assert all(counts[s] / total < 0.05 for s in ("sub-borrow", "mul-2digit", "mod"))  # the rare skills
    assert all(counts[s] / total > 0.07 for s in ("add-no-carry", "sub-no-borrow", "div-exact", "max"))


def test_step_rewards_and_difficulty_rules():
    p = Problem(37, (("+", 48), ("*", 1), ("%", 7)))
    assert step_rewards(p, p.solution) == [1.0, 1.0, 1.0, 1.0]
    assert step_rewards(p, "37+48=85;85*1=84;84%7=0;#0") == [1.0, 0.0, 0.0, 0.0]
    assert not is_difficult([1.0, 1.0, 1.0, 1.0])
    assert is_difficult([1.0, 1.0, 1.0, 0.8])  # final step <= tau1
    assert is_difficult([1.0, 0.69, 1.0, 1.0])  # an intermediate step <= tau2
    assert is_difficult([0.75, 0.75, 0.9, 0.95])  # mean <= tau1
    assert not is_difficult([0.75, 0.95, 0.95, 0.95])  # none of the three rules fires


# --------------------------------------------------------------------------------------------- Stage 2: profile


class ScriptedTeacher:
    def __init__(self, answers):
        self.answers = answers

    def missing_skills(self, question, solution, subject=""):
        return self.answers[question]


def test_missing_skill_profile_counts_questions_not_labels():
    t = ScriptedTeacher({"a": ["x", "y", "x"], "b": ["y"], "c": [], "d": ["z", "y"]})
    per_q, prof = missing_skill_profile([(q, "sol", "") for q in "abcd"], t)
    assert prof == Counter({"y": 3, "x": 1, "z": 1})  # f(s) = |{q : s in MSP(q)}|; duplicates count once
    assert [q for q, _ in per_q] == ["a", "b", "d"]  # judged-correct questions are dropped


def test_oracle_teacher_names_first_wrong_steps():
    p = Problem(37, (("+", 48), ("-", 29), ("%", 7), ("*", 3)))
    t = OracleTeacher(label_noise=0.0, max_missing=2)
    wrong = "37+48=85;85-29=54;54%7=5;5*3=15;#15"  # a borrow slip; later steps are right given it
    assert t.missing_skills(p.question, wrong) == ["sub-borrow"]
    two = "37+48=85;85-29=54;54%7=4;4*3=12;#12"  # a borrow slip and a remainder slip
    assert t.missing_skills(p.question, two) == ["sub-borrow", "mod"]
    assert t.missing_skills(p.question, "37+48=85;85-29=56;56%7=0;#0") == ["mul-1digit"]  # missing step
    assert t.missing_skills(p.question, p.solution) == []
    noisy = OracleTeacher(label_noise=1.0, max_missing=1, seed=3)
    wrong = "37+48=85;85-29=54;54%7=5;5*3=15;#15"
    for _ in range(20):  # a noisy label is always another skill of the same problem
        (s,) = noisy.missing_skills(p.question, wrong)
        assert s in p.skills and s != "sub-borrow"


# --------------------------------------------------------------------------------------------- Stage 3a: STAT-Sel


def test_selection_weights_formula():
    skill_map = {"a": [0, 1], "b": [1, 2, 3], "c": [4]}
    w = selection_weights({"a": 2, "b": 3}, skill_map, 5)
    # P_sel(p) ∝ sum_s f(s) 1[p in M(s)] / |M(s)|
    expect = np.array([2 / 2, 2 / 2 + 3 / 3, 3 / 3, 3 / 3, 0.0])
    np.testing.assert_allclose(w, expect / expect.sum())
    with pytest.raises(ValueError):
        selection_weights({"c": 0}, skill_map, 5)


def test_stat_sel_draws_follow_selection_weights():
    skill_map = {"a": [0, 1], "b": [1, 2, 3], "c": [4]}
    per_q = [("q1", ["a", "b"]), ("q2", ["b"]), ("q3", ["b", "a"])]  # f(a)=2, f(b)=3
    rng = random.Random(0)
    draws = []
    for _ in range(2000):
        draws += stat_sel(per_q, skill_map, m=5, rng=rng)
    assert len(draws) == 2000 * 5 * 5  # m per (q, s) pair
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, selection_weights({"a": 2, "b": 3}, skill_map, 5), atol=0.01)


def test_fill_budget_is_exact():
    rng = random.Random(0)
    assert len(fill_budget(range(10), 25, rng)) == 25 and len(fill_budget(range(100), 25, rng)) == 25
    assert sorted(fill_budget(range(10), 25, rng)[:10]) == list(range(10))  # all items before any repeat


# --------------------------------------------------------------------------------------------- Stage 3b: STAT-Syn


def test_filter_by_agreement():
    assert filter_by_agreement(["1+1=2;#2", "1+1=3;#3", "x;#2"], 2) == ["1+1=2;#2", "x;#2"]
    assert filter_by_agreement(["#1", "#2", "#3"], 2) == []
    assert filter_by_agreement(["a \\boxed{5}", "b \\boxed{5}", "c"], 2) == ["a \\boxed{5}", "b \\boxed{5}"]
    assert filter_by_agreement(["#7"], 1) == ["#7"]


class FakeSynTeacher:
    def __init__(self):
        self.n = 0

    def propose_question(self, refs, skill):
        self.n += 1
        return f"{skill}-{self.n}"

    def solve(self, question, n=3):
        k = int(question.rsplit("-", 1)[1])
        if k % 3 == 0:
            return ["#1", "#2", "#3"][:n]  # no agreement -> dropped
        return ["s1;#4", "s2;#4", "s3;#9"][:n]


def test_stat_syn_keeps_only_agreeing_solutions():
    per_q = [("q1", ["a"]), ("q2", ["a", "b"])]
    kept, stats = stat_syn(
        per_q, {"a": [0], "b": [1]}, ["p0", "p1"], FakeSynTeacher(), random.Random(0), questions_per_pair=2
    )
    assert stats["proposed"] == 6 and stats["rejected_disagreement"] == 2 and stats["kept_questions"] == 4
    assert all(sol in ("s1;#4", "s2;#4") for _, sol in kept) and len(kept) == 8


def test_stat_syn_with_oracle_teacher_filters_slips():
    gen, rng = Generator(), random.Random(1)
    pool = gen.sample_many(200, rng)
    qs = [p.question for p in pool]
    skill_map = build_skill_map(qs, lambda q: parse_question(q).skills)
    teacher = OracleTeacher(error_rate=0.3, seed=0)
    per_q = [("q", ["mod", "sub-borrow"])] * 20
    kept, stats = stat_syn(per_q, skill_map, qs, teacher, rng, forbidden=set(qs[:50]))
    assert stats["kept_questions"] > 0 and stats["rejected_disagreement"] > 0
    assert not {q for q, _ in kept} & set(qs[:50])
    wrong = np.mean([sol.rsplit("#", 1)[1] != str(parse_question(q).answer) for q, sol in kept])
    assert wrong < 0.1  # 30% of raw solutions carry a slip; 2-of-3 agreement removes most wrong answers
    by_skill = Counter(s for q, _ in kept for s in set(parse_question(q).skills))
    assert by_skill["mod"] > 0 and by_skill["sub-borrow"] > 0


# --------------------------------------------------------------------------------------------- LLM teacher client


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        prompt = body["messages"][-1]["content"]
        if "strengthen" in prompt:
            text = "<judge>incorrect</judge><reason>borrow lost</reason><skill>Sub-Borrow, mod, not a skill</skill>"
        elif "NEW problem" in prompt:
            text = "<reason>r</reason><draft>d</draft><question>52-17%5?</question>"
        elif "at most five" in prompt:
            text = "<skill>mod</skill>"
        else:
            text = "52-17=35;35%5=0. The answer is \\boxed{0}."
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    _FakeOpenAI.requests = []
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_llm_teacher_against_fake_openai_server(fake_server, tmp_path):
    cache = CallCache(tmp_path / "cache.jsonl")
    t = LLMTeacher(
        OpenAIChat(fake_server, api_key="sk-test"),
        {"arithmetic": list(SKILLS)},
        model="m-mini",
        synthesis_model="m-big",
        cache=cache,
    )
    assert t.missing_skills("52-17%5?", "52-17=45;#0", "arithmetic") == ["sub-borrow", "mod"]
    assert t.propose_question(["1+2?"], "mod") == "52-17%5?"
    sols = t.solve("52-17%5?", n=3)
    assert len(sols) == 3 and filter_by_agreement(sols, 2) == sols
    assert t.label_skills("52-17%5?", "arithmetic") == ["mod"]
    paths = {p for p, _, _ in _FakeOpenAI.requests}
    assert paths == {"/v1/chat/completions"}
    assert all(auth == "Bearer sk-test" for _, auth, _ in _FakeOpenAI.requests)
    models = [b["model"] for _, _, b in _FakeOpenAI.requests]
    assert models.count("m-big") == 1 and models.count("m-mini") == 5
    n = len(_FakeOpenAI.requests)
    t2 = LLMTeacher(
        OpenAIChat(fake_server),
        {"arithmetic": list(SKILLS)},
        model="m-mini",
        synthesis_model="m-big",
        cache=CallCache(tmp_path / "cache.jsonl"),
    )
    assert t2.missing_skills("52-17%5?", "52-17=45;#0", "arithmetic") == ["sub-borrow", "mod"]
    assert len(_FakeOpenAI.requests) == n and t2.stats["cache_hits"] == 1  # answered from the cache file


def test_tag_parsing():
    assert tag("<a>x</a> <a> y </a>", "a") == "y" and tag("<a>open", "a") == "open" and tag("none", "a") is None
    assert match_skills("Basic Arithmetic., solving equations", ["basic arithmetic", "solving equations"]) == [
        "basic arithmetic",
        "solving equations",
    ]


# --------------------------------------------------------------------------------------------- student


def test_tokenizer_matches_codec_and_cached_decoding_matches_full():
    codec, tok = CharCodec(), build_tokenizer()
    text = "37+48%7M9?37+48=85;85%7=1;1M9=9;#9"
    assert tok(text)["input_ids"] == codec.encode(text)
    torch.manual_seed(0)
    model = build_student(2, 32, 2, 64).eval()
    prompt = torch.tensor([codec.encode("37+48%7M9?")] * 2)
    fast = greedy_decode(model, prompt, 12, eos_id=-1)
    x = prompt
    with torch.no_grad():
        for _ in range(12):
            x = torch.cat([x, model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, x[:, prompt.size(1) :])


# --------------------------------------------------------------------------------------------- smoke (real entry point)


def test_arith_smoke_end_to_end_and_resume(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from papers.stat.train import main

    args = ["--preset", "arith-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"]
    main(args + ["method=stat_syn"])
    rec = json.loads((tmp_path / "raw/stat/arith-smoke/stat_syn-seed0.json").read_text())
    assert rec["method"] == "stat_syn" and "acc_test" in rec["metrics"] and "acc_skill/mod" in rec["metrics"]
    assert (tmp_path / "raw/stat/arith-smoke/base-seed0.json").exists()
    assert sum(rec["extra"]["train_set"]["skill_histogram"].values()) > 0
    folder = tmp_path / "runs/stat/arith-smoke/stat_syn-seed0/student"
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "gpt2" and tok("1+2?")["input_ids"] == CharCodec().encode("1+2?")
    lines = (tmp_path / "runs/stat/arith-smoke/stat_syn-seed0/train_set.jsonl").read_text().splitlines()
    assert len(lines) == 48  # exactly the budget
    from papers.stat.eval import main as eval_main

    eval_main(args + ["method=stat_syn"])  # re-evaluates the saved student folder
    main(args + ["method=stat_sel"])  # reuses the cached base student and profile
    assert (tmp_path / "raw/stat/arith-smoke/stat_sel-seed0.json").exists()


def test_cli_errors_exit_2(capsys):
    from papers.stat.train import main

    with pytest.raises(SystemExit) as e:
        main(["--preset", "arith-smoke", "--set", "method=nope"])
    assert e.value.code == 2 and "method" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--preset", "arith", "--set", "min_agree=4"])
    assert e.value.code == 2


def test_math_smoke_lora_adapter_and_merge(tmp_path):
    from transformers import AutoModelForCausalLM

    from papers.stat.fullscale import merge
    from papers.stat.train import main

    main(
        [
            "--preset",
            "math-smoke",
            "--set",
            f"out_dir={tmp_path}/runs",
            f"results_dir={tmp_path}/raw",
            "method=stat_syn",
        ]
    )
    rec = json.loads((tmp_path / "raw/stat/math-smoke/stat_syn-seed0.json").read_text())
    assert set(rec["metrics"]) == {"acc/math500", "acc/gsm8k", "pass@3/amc23", "avg@3/amc23"}
    assert rec["metrics"]["pass@3/amc23"] >= rec["metrics"]["avg@3/amc23"]  # k samples at T = 1 on AMC23
    assert rec["extra"]["train_set"]["kept_questions"] > 0 and "oracle" in rec["protocol"]["teacher"]
    run = tmp_path / "runs/stat/math-smoke/stat_syn-seed0"
    assert len((run / "train_set.jsonl").read_text().splitlines()) == 12  # math_budget of the smoke twin
    merge(str(run / "adapter"), str(tmp_path / "merged"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.model_type == "llama"


def test_math_augment_pool_keeps_distinct_rewrites_of_training_questions_in_the_boxed_format():
    from papers.stat.fullscale import augment_pool, boxed_rewrite
    from papers.stat.mathtext import last_boxed

    assert boxed_rewrite("2 + 3 = 5.\nThe answer is: 5") == "2 + 3 = 5.\n\nThe answer is $\\boxed{5}$."
    assert boxed_rewrite("half.\nThe answer is $\\frac{1}{2}$.").endswith("$\\boxed{\\frac{1}{2}}$.")
    assert boxed_rewrite("no closing line") is None
    train = [
        {"problem": "What is 2+3?", "solution": "2+3=5. $\\boxed{5}$"},
        {"problem": "What is 7-1?", "solution": "7-1=6. $\\boxed{6}$"},
    ]
    rows = [
        {"instruction": "What is  2+3?", "output": "2+3=5. $\\boxed{5}$"},  # the MATH solution itself: skipped
        {"instruction": "What is 2+3?", "output": "Add: 2+3=5.\nThe answer is: 5"},
        {"instruction": "What is 2+3?", "output": "Add:  2+3=5.\nThe answer is: 5"},  # same rewrite: skipped
        {"instruction": "What is 2+3?", "output": "Count up from 2.\nThe answer is 5."},
        {"instruction": "What is 2+3?", "output": "A third rewrite.\nThe answer is 5."},  # over the cap of 3 answers
        {"instruction": "What is 3+2?", "output": "A rephrased question.\nThe answer is 5."},  # not a MATH question
        {"instruction": "What is 7-1?", "output": "no answer line"},
    ]
    pool = augment_pool(rows, train, per_question=3)
    assert list(pool) == ["What is 2+3?"] and len(pool["What is 2+3?"]) == 2
    assert all(last_boxed(a) == "5" for a in pool["What is 2+3?"])
    assert augment_pool(rows, train, per_question=1) == {}


def test_math_smoke_augment_baseline_and_selection_attach_rewritten_answers(tmp_path):
    from papers.stat.mathtext import last_boxed
    from papers.stat.train import main

    args = ["--preset", "math-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"]
    main(args + ["method=augment"])
    rec = json.loads((tmp_path / "raw/stat/math-smoke/augment-seed0.json").read_text())
    per_q = rec["extra"]["train_set"]["answers_per_question"]
    assert per_q["max"] == 3 and per_q["mean"] == 3.0  # the smoke pool has two rewrites of every question
    rows = [json.loads(x) for x in (tmp_path / "runs/stat/math-smoke/augment-seed0/train_set.jsonl").open()]
    assert len(rows) == 12 and all(last_boxed(r["solution"]) is not None for r in rows)
    answers = Counter(r["question"] for r in rows)
    assert len({r["solution"] for r in rows}) == len(rows) and max(answers.values()) <= 3
    with pytest.raises(SystemExit) as e:
        main(["--preset", "arith-smoke", "--set", "method=augment"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(args + ["method=uniform"])  # an embedded control has no full-scale training set
    assert e.value.code == 2
    main(args + ["method=stat_sel"])  # the selection attaches the rewrites too
    sel = json.loads((tmp_path / "raw/stat/math-smoke/stat_sel-seed0.json").read_text())
    assert sel["extra"]["train_set"]["answers_per_question"]["mean"] == 3.0


def test_math_smoke_answers_cut_off_by_max_seq_len_are_a_clear_error(tmp_path):
    from common.config import ConfigError
    from papers.stat.train import main

    args = ["--preset", "math-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"]
    with pytest.raises(ConfigError, match="max_seq_len: 96 tokens cut off every answer"):
        main(args + ["method=sft", "max_seq_len=96"])


def test_boxed_answer_checker():
    from papers.stat.mathtext import is_equiv, last_boxed

    assert last_boxed("so \\boxed{\\frac{1}{2}} and \\boxed{3}") == "3"
    assert last_boxed("x = \\boxed{\\frac{a}{b^{2}}}.") == "\\frac{a}{b^{2}}"
    assert is_equiv("\\dfrac{1}{2}", "0.5") and is_equiv("1,000", "1000") and is_equiv("x=5", "5")
    assert is_equiv("\\left(1,2\\right)", "(1,2)") and not is_equiv("3", "4") and not is_equiv(None, "4")


def test_math_verify_checker_beyond_string_normalisation():
    from papers.stat.mathtext import answers_match, checker_version, is_equiv

    # math-verify decides what our normaliser leaves to string comparison: intervals, sets, reordered expressions
    assert answers_match("[1, 2)", "[1,2)") and not answers_match("(1, 2)", "[1,2)")
    assert answers_match("\\{3, 1, 2\\}", "\\{1,2,3\\}") and not is_equiv("\\{3, 1, 2\\}", "\\{1,2,3\\}")
    assert answers_match("2\\sqrt{2}", "\\sqrt{8}") and not answers_match("2\\sqrt{2}", "\\sqrt{6}")
    assert answers_match("\\frac{1}{2}", "0.5") and not answers_match("3", "4") and not answers_match(None, "4")
    assert answers_match("\\text{(B)}", "\\text{(B)}")  # text answers
    assert answers_match("\\dfrac{1}{2}", "0.5", "boxed") and checker_version("boxed") == "stat-boxed-v1"
    assert checker_version("math-verify").startswith("math-verify-0.")


def test_arith_long_smoke_shares_one_base_across_seeds(tmp_path):
    from papers.stat.claims import main as claims
    from papers.stat.train import main

    main(
        [
            "--preset",
            "arith-long-smoke",
            "--set",
            f"out_dir={tmp_path}/runs",
            f"results_dir={tmp_path}/raw",
            "seed=1",
            "method=sft",
        ]
    )
    runs = tmp_path / "runs/stat/arith-long-smoke"
    assert (runs / "base-seed0/student/config.json").exists() and not (runs / "base-seed1/student").exists()
    assert (runs / "base-seed1/profile.json").exists()  # each seed has its own profile on its own val set
    recs = sorted(p.name for p in (tmp_path / "raw/stat/arith-long-smoke").glob("*.json"))
    assert recs == ["base-seed1.json", "sft-seed1.json"]
    claims(
        [
            "--preset",
            "arith-long-smoke",
            "--seeds",
            "1",
            "--summary-only",
            "--results-dir",
            f"{tmp_path}/raw",
            "--out-dir",
            f"{tmp_path}/runs",
        ]
    )
    assert "Saturation check" in (runs / "claims_summary.md").read_text()
    main(
        [
            "--preset",
            "arith-long-v5k-smoke",
            "--set",
            f"out_dir={tmp_path}/runs",
            f"results_dir={tmp_path}/raw",
            "method=stat_sel",
        ]
    )  # reuses the base student of arith-long-smoke
    v5k = tmp_path / "runs/stat/arith-long-v5k-smoke"
    assert (v5k / "base-seed0/profile.json").exists() and not (v5k / "base-seed0/student").exists()
    rec = json.loads((tmp_path / "raw/stat/arith-long-v5k-smoke/stat_sel-seed0.json").read_text())
    assert rec["extra"]["train_set"]["before_budget"] > 0


# --------------------------------------------------------------------------------------------- teacher client (loopback)


class _ScriptedAPI(BaseHTTPRequestHandler):
    """A local OpenAI-compatible server that plays a script: each request pops the next behaviour."""

    script: list = []
    responder = None  # optional (prompt, request number) -> behaviour, instead of the script
    seen: list = []
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - http.server API
        import time

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.seen.append(body)
            if cls.responder is not None:
                step = cls.responder(body["messages"][-1]["content"], len(cls.seen))
            else:
                step = cls.script.pop(0) if cls.script else ("ok", "<skill>mod</skill>")
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            kind = step[0]
            if kind == "slow":
                time.sleep(step[1])
                step = ("ok", step[2])
                kind = "ok"
            if kind in ("429", "500", "400", "401"):
                data = b'{"error": {"message": "scripted"}}'
                self.send_response(int(kind))
                if kind == "429" and len(step) > 1:
                    self.send_header("Retry-After", str(step[1]))
            else:
                content = {"ok": step[1] if len(step) > 1 else "x", "null": None, "length": "<skill>mo"}[kind]
                finish = "length" if kind == "length" else "stop"
                msg = {"role": "assistant", "content": content}
                data = json.dumps(
                    {
                        "choices": [{"message": msg, "finish_reason": finish}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
                    }
                ).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    from http.server import ThreadingHTTPServer

    _ScriptedAPI.script, _ScriptedAPI.seen, _ScriptedAPI.responder = [], [], None
    _ScriptedAPI.in_flight = _ScriptedAPI.max_in_flight = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedAPI)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def _client(url, sleeps, **kw):
    from papers.stat.teacher import Usage

    return OpenAIChat(url, api_key="k", backoff=0.01, usage=Usage(kw.pop("log", None)), sleep=sleeps.append, **kw)


def test_client_retries_429_and_500_honouring_retry_after_loopback(scripted_server, tmp_path):
    _ScriptedAPI.script = [("429", 7), ("500",), ("ok", "fine")]
    sleeps = []
    client = _client(scripted_server, sleeps, log=tmp_path / "usage.jsonl")
    reply = client.chat([{"role": "user", "content": "q"}], model="gpt-4o-mini")
    assert reply.text == "fine" and reply.complete and len(_ScriptedAPI.seen) == 3
    assert sleeps[0] == 7 and 0 < sleeps[1] < 1  # Retry-After honoured, then exponential back-off
    usage = client.usage.summary()
    assert usage["calls"] == 1 and usage["retries"] == 2 and usage["prompt_tokens"] == 100
    assert usage["cost_usd"] == pytest.approx((100 * 0.15 + 20 * 0.60) / 1e6)
    row = json.loads((tmp_path / "usage.jsonl").read_text().splitlines()[0])
    assert row["attempts"] == 3 and row["completion_tokens"] == 20


def test_client_does_not_retry_other_4xx_and_gives_up_after_max_retries_loopback(scripted_server):
    from papers.stat.teacher import TeacherAPIError

    for code in ("400", "401"):
        _ScriptedAPI.script, _ScriptedAPI.seen = [(code,)], []
        with pytest.raises(TeacherAPIError) as e:
            _client(scripted_server, []).chat([{"role": "user", "content": "q"}], model="m")
        assert e.value.status == int(code) and len(_ScriptedAPI.seen) == 1
    _ScriptedAPI.script, _ScriptedAPI.seen = [("500",)] * 5, []
    sleeps = []
    with pytest.raises(TeacherAPIError, match="after 3 attempts"):
        _client(scripted_server, sleeps, max_retries=2).chat([{"role": "user", "content": "q"}], model="m")
    assert len(_ScriptedAPI.seen) == 3 and len(sleeps) == 2


def test_client_slow_response_times_out_then_retries_loopback(scripted_server):
    _ScriptedAPI.script = [("slow", 1.5, "late"), ("ok", "on time")]
    reply = _client(scripted_server, [], timeout=0.3).chat([{"role": "user", "content": "q"}], model="m")
    assert reply.text == "on time" and len(_ScriptedAPI.seen) == 2


def test_null_content_and_truncation_are_never_cached_loopback(scripted_server, tmp_path):
    cache = CallCache(tmp_path / "cache.jsonl")
    t = LLMTeacher(_client(scripted_server, []), {"arithmetic": list(SKILLS)}, model="m", cache=cache)
    _ScriptedAPI.script = [("null",), ("length",), ("ok", "<skill>mod</skill>")]
    assert t.label_skills("52%5?", "arithmetic") == []  # content null: no answer, not cached
    assert len(cache) == 0 and t.stats["null_content"] == 1
    assert t.label_skills("52%5?", "arithmetic") == []  # cut at max_tokens: not cached either
    assert len(cache) == 0 and t.stats["truncated"] == 1
    assert t.label_skills("52%5?", "arithmetic") == ["mod"]
    assert t.label_skills("52%5?", "arithmetic") == ["mod"] and t.stats["cache_hits"] == 1
    assert len(_ScriptedAPI.seen) == 3 and len(CallCache(tmp_path / "cache.jsonl")) == 1


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    c = CallCache(path)
    c.put("a", "1")
    c.put("b", "2")
    with open(path, "a") as f:
        f.write('{"key": "c", "respo')  # the process died mid-write
    c2 = CallCache(path)
    assert c2.get("a") == "1" and c2.get("b") == "2" and c2.skipped_lines == 1
    c2.put("d", "4")
    c3 = CallCache(path)
    assert [c3.get(k) for k in "abd"] == ["1", "2", "4"] and c3.get("c") is None


def test_profile_runs_concurrent_requests_in_order_loopback(scripted_server, tmp_path):
    n = 8
    _ScriptedAPI.script = [("slow", 0.3, f"<judge>incorrect</judge><skill>{SKILLS[i % 4]}</skill>") for i in range(n)]
    t = LLMTeacher(_client(scripted_server, []), {"arithmetic": list(SKILLS)}, model="m", concurrency=4)
    items = [(f"{10 + i}+1?", "x", "arithmetic") for i in range(n)]
    per_q, profile = missing_skill_profile(items, t)
    assert 2 <= _ScriptedAPI.max_in_flight <= 4
    assert [q for q, _ in per_q] == [q for q, _, _ in items]  # order kept
    assert sum(profile.values()) == n


def test_arith_stat_syn_with_llm_teacher_survives_foreign_characters_loopback(scripted_server, tmp_path):
    """An LLM teacher writes text the character-level student cannot read: it is dropped, nothing crashes."""
    from papers.stat.train import main

    def reply(prompt, i):
        if "strengthen" in prompt:
            return ("ok", "<judge>incorrect</judge><reason>r</reason><skill>sub-borrow</skill>")
        if "NEW problem" in prompt:
            if i % 2:
                return ("ok", "<question>What is 52 − 17 % 5? Δ</question>")  # not a chain at all
            return ("ok", f"<question>{52 + i % 40}-17?</question>")
        q = prompt.split("Problem: ")[1].split("?")[0] + "?"
        p = parse_question(q)
        if i % 2:
            return ("ok", f"The answer is $\\boxed{{{p.answer}}}$ ✓")  # foreign characters
        return ("ok", p.solution)

    _ScriptedAPI.responder = reply
    args = ["--preset", "arith-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"]
    main(args + ["method=stat_syn", "teacher=openai", f"teacher_url={scripted_server}", "syn_max_passes=1"])
    rec = json.loads((tmp_path / "raw/stat/arith-smoke/stat_syn-seed0.json").read_text())
    assert rec["extra"]["train_set"].get("rejected_format", 0) > 0
    assert (tmp_path / "runs/stat/teacher_cache.jsonl").exists()  # one shared cache under out_dir


def test_hf_chat_with_a_tiny_random_chat_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from papers.stat.fullscale import tiny_tokenizer
    from papers.stat.teacher import HFChat

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    chat = HFChat(str(tmp_path / "m"))
    reply = chat.chat([{"role": "user", "content": "Solve 1+1."}], max_tokens=6)
    assert isinstance(reply.text, str) and reply.completion_tokens <= 6 and reply.prompt_tokens > 5
    assert reply.finish_reason in ("stop", "length") and chat.model.dtype == torch.float32  # CPU: fp32
    assert chat.usage.summary()["calls"] == 1


# --------------------------------------------------------------------------------------------- arith-rare design


def test_hash_reservation_keeps_evaluation_out_of_every_training_path():
    from dataclasses import replace

    from papers.stat.arith import Reserve, is_reserved
    from papers.stat.config import PRESETS
    from papers.stat.eval import make_eval_sets, task_of
    from papers.stat.train import build_train_set, make_pool

    cfg = replace(PRESETS["arith-rare-smoke"], pool_size=3000, budget=400)
    task = task_of(cfg)
    sets = make_eval_sets(cfg, 0)
    assert sets.questions() and all(is_reserved(q, cfg.reserve_frac) for q in sets.questions())
    rng = random.Random(0)
    gen = task.train_generator(cfg.max_value)
    assert not any(is_reserved(gen.sample(rng).question, cfg.reserve_frac) for _ in range(5000))
    assert not any(is_reserved(p.question, cfg.reserve_frac) for p in make_pool(cfg, sets, 0))
    # a tiny question space: the generator must skip the reserved chains, not emit them
    tiny = Generator({"add-no-carry": 1.0}, n_ops=(1,), exclude=Reserve(0.5), max_value=20, exact=True)
    drawn = {tiny.sample(rng).question for _ in range(2000)}
    assert drawn and not any(is_reserved(q, 0.5) for q in drawn)
    assert any(is_reserved(f"{a}+{b}?", 0.5) for a in range(2, 20) for b in range(1, 20 - a))
    per_q = [(p.question, [s]) for p in sets.val[:20] for s in task.rare[:1]]

    class _Run:
        is_main = False

    prof = {"per_question": per_q, "profile": {task.rare[0]: len(per_q)}, "difficult_questions": []}
    for method in ("sft", "uniform", "stat_sel", "stat_sel_shuffled", "stat_syn"):
        items, info = build_train_set(replace(cfg, method=method), prof, make_pool(cfg, sets, 0), sets, _Run())
        assert len(items) == cfg.budget and info["eval_questions_in_train_set"] == 0
        assert not any(is_reserved(q, cfg.reserve_frac) for q, _ in items)


def test_calibrated_rarity_and_shuffled_profile():
    from papers.stat.arith import calibrate_weights
    from papers.stat.train import shuffled_skills

    active = ("add-no-carry", "add-carry", "sub-no-borrow", "sub-borrow", "mul-1digit", "div-exact", "max")
    _, shares = calibrate_weights(active, {"sub-borrow": 0.01, "div-exact": 0.01}, n=8000, iters=3)
    assert 0.006 < shares["sub-borrow"] < 0.015 and 0.006 < shares["div-exact"] < 0.015
    assert shares["mod"] == 0 and shares["add-no-carry"] > 0.1
    perm = shuffled_skills(active, {"sub-borrow", "add-carry"}, random.Random(0))
    assert sorted(perm.values()) == sorted(active)
    assert perm["sub-borrow"] != "sub-borrow" and perm["add-carry"] != "add-carry"


def test_stat_syn_dedupes_identical_solutions():
    t = OracleTeacher(label_noise=0.0, error_rate=0.0, seed=0)
    pool = [p.question for p in Generator().sample_many(200, random.Random(0))]
    skill_map = build_skill_map(pool, lambda q: sorted(set(parse_question(q).skills)))
    per_q = [("1+2?", ["mod"])] * 5
    kept, stats = stat_syn(per_q, skill_map, pool, t, random.Random(0), dedupe=True, target_unique=12)
    assert len(kept) == len({q for q, _ in kept}) == stats["kept_questions"] >= 12  # one pair per question


def test_paired_statistics():
    from papers.stat.experiment import mdd, paired_bootstrap, paired_t_interval

    m, lo, hi = paired_t_interval([1.0, 2.0, 3.0, 2.0, 2.0])
    assert (
        m == 2.0
        and lo < 2.0 < hi
        and hi - lo == pytest.approx(2 * 2.776 * np.std([1, 2, 3, 2, 2], ddof=1) / 5**0.5, rel=1e-3)
    )
    rng = np.random.default_rng(0)
    a = [rng.random(2000) < 0.6 for _ in range(3)]
    b = [rng.random(2000) < 0.5 for _ in range(3)]
    point, blo, bhi = paired_bootstrap(list(zip(a, b)), n_boot=500)
    assert blo < point < bhi and blo > 5 and bhi < 15  # ~10 points, resolved
    same = paired_bootstrap([(x, x) for x in a], n_boot=200)
    assert same == (0.0, 0.0, 0.0)
    assert 0.5 < mdd(0.9, 5000, 5) < 1.0


def test_arith_rare_smoke_stages_gates_block_then_grid_claim_summary(tmp_path, monkeypatch):
    """The redesigned experiment through its stages on the smoke twin: failed gates block the claim; with gates
    recorded as passed, the grid picks an LR per method, seed 0 comes from its grid run, the summary has endpoints."""
    from papers.stat import experiment as ex

    common = ["--preset", "arith-rare-smoke", "--results-dir", f"{tmp_path}/raw", "--out-dir", f"{tmp_path}/runs"]
    common += ["--claim-seeds", "0", "1"]
    ex.main(["bases", "--seeds", "0", "1", *common])
    ex.main(["gates", *common])
    raw = tmp_path / "raw/stat/arith-rare-smoke"
    room = json.loads((raw / "gate:room-seed0.json").read_text())
    assert room["metrics"]["passed"] == 0.0  # a 3-step base has no common skill at 95%
    assert json.loads((raw / "gate:reservation-seed0.json").read_text())["metrics"]["passed"] == 1.0
    with pytest.raises(SystemExit, match="learnability|untestable"):
        ex.main(["grid", "--methods", "sft", *common])
    for path in raw.glob("gate:*.json"):  # pretend every gate passed, to exercise the rest of the path
        r = json.loads(path.read_text())
        r["metrics"]["passed"] = 1.0
        path.write_text(json.dumps(r))
    for name in ("learnability", "saturation"):
        for s in (0, 1, 99):
            src = raw / "gate:room-seed0.json"
            r = json.loads(src.read_text())
            r["method"], r["seed"] = f"gate:{name}", s
            (raw / f"gate:{name}-seed{s}.json").write_text(json.dumps(r))
    methods = ["--methods", "sft", "stat_sel", "stat_sel_shuffled"]
    ex.main(["grid", *methods, "--lrs", "0.001", "0.003", *common])
    grid = sorted(p.name for p in (tmp_path / "raw/stat/arith-rare-smoke-lrgrid").glob("*.json"))
    assert len(grid) == 6 and all("@lr=" in g for g in grid)
    monkeypatch.setattr(ex, "LR_GRID", (1e-3, 3e-3))
    ex.main(["claim", *methods, "--seeds", "0", "1", *common])
    rec0 = json.loads((raw / "stat_sel-seed0.json").read_text())
    assert rec0["extra"]["from_lr_grid_run"] and "acc_test" in rec0["metrics"]
    rec1 = json.loads((raw / "stat_sel_shuffled-seed1.json").read_text())
    assert rec1["extra"]["train_set"]["eval_questions_in_train_set"] == 0 and rec1["extra"]["train_set"]["permutation"]
    ex.main(["summary", *methods, *common])
    text = (tmp_path / "runs/stat/arith-rare-smoke/claims_summary.md").read_text()
    assert (tmp_path / "runs/stat/arith-rare-smoke/claims_summary.png").stat().st_size > 0
    assert "stat_sel − sft (E1/E2) | profiled" in text and "unique questions" in text


def test_math_smoke_math_d_is_defined_by_the_base_and_shared(tmp_path):
    from papers.stat.train import main

    args = ["--preset", "math-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"]
    args += ["eval_sets=math_d,math500"]
    with pytest.raises(SystemExit, match="method=base"):
        main(args + ["method=sft"])
    main(args + ["method=base"])
    saved = json.loads((tmp_path / "runs/stat/math-smoke/math_d-seed0.json").read_text())
    assert saved["of"] == 4 and len(saved["items"]) <= 4
    main(args + ["method=sft"])
    rec = json.loads((tmp_path / "raw/stat/math-smoke/sft-seed0.json").read_text())
    assert ("acc/math_d" in rec["metrics"]) == bool(saved["items"]) and "acc/math500" in rec["metrics"]


def test_base_cache_is_keyed_by_its_config_and_ignores_fine_tune_knobs(tmp_path):
    """The cached base student is reused by every method and fine-tuning knob of its seed, and only by them: a
    longer ``steps`` trains on (from the run's checkpoint) and replaces the student, its profile and its record."""
    from papers.stat.train import main

    def run(*kv):
        main(["--preset", "arith-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw", *kv])

    base = tmp_path / "runs/stat/arith-smoke/base-seed0"
    rec = tmp_path / "raw/stat/arith-smoke/base-seed0.json"
    run("method=sft")
    key = json.loads((base / "student/trained_by.json").read_text())
    weights = (base / "student/model.safetensors").read_bytes()
    # fine-tune-only keys (and another method) neither refuse the shared base folder nor retrain it
    run("method=uniform", "ft_lr=0.002", "budget=40", "ft_epochs=2")
    assert (base / "student/model.safetensors").read_bytes() == weights
    assert json.loads(rec.read_text())["config"]["steps"] == key["steps"]
    # a longer base run is a different student: trained on, saved with its new key, profile and record rebuilt
    run("method=sft", f"steps={key['steps'] + 2}", "run_name=sft-longer")
    new = json.loads((base / "student/trained_by.json").read_text())
    assert new["steps"] == key["steps"] + 2 and (base / "student/model.safetensors").read_bytes() != weights
    r = json.loads(rec.read_text())
    assert r["config"]["steps"] == key["steps"] + 2
    assert json.loads((base / "profile.json").read_text())["base_student_key"] == r["extra"]["base_student_key"]
