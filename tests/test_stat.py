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
    assert set(rec["metrics"]) == {"acc/math500", "acc/gsm8k"} and rec["extra"]["train_set"]["kept_questions"] > 0
    run = tmp_path / "runs/stat/math-smoke/stat_syn-seed0"
    assert len((run / "train_set.jsonl").read_text().splitlines()) == 12  # math_budget of the smoke twin
    merge(str(run / "adapter"), str(tmp_path / "merged"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.model_type == "llama"


def test_boxed_answer_checker():
    from papers.stat.mathtext import is_equiv, last_boxed

    assert last_boxed("so \\boxed{\\frac{1}{2}} and \\boxed{3}") == "3"
    assert last_boxed("x = \\boxed{\\frac{a}{b^{2}}}.") == "\\frac{a}{b^{2}}"
    assert is_equiv("\\dfrac{1}{2}", "0.5") and is_equiv("1,000", "1000") and is_equiv("x=5", "5")
    assert is_equiv("\\left(1,2\\right)", "(1,2)") and not is_equiv("3", "4") and not is_equiv(None, "4")


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
