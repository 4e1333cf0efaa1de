"""Bad input through the real entry points: exit code 2, one line on stderr naming the key or path, nothing written.

Table-driven; each case runs the entry point in-process through `common.cli.entry` (what `python -m ...` runs), with
out_dir and results_dir inside the test's temporary folder, so that "nothing written" can be checked there.
"""

import importlib

import pytest

from common.cli import entry


def _image_dir(tmp, kind):
    d = tmp / "imgs"
    d.mkdir()
    if kind == "corrupt":
        (d / "0.png").write_bytes(b"\x89PNG but not really")
    return d


def _file(tmp, name, text):
    p = tmp / name
    p.write_text(text)
    return p


# (id, module, argv builder (tmp -> list), text the one-line error must contain)
CASES = [
    ("unknown-preset", "papers.dmd2.train", lambda t: ["--preset", "nope"], "preset: 'nope' does not exist"),
    ("unknown-key", "papers.dmd2.train", lambda t: ["--set", "bogus=1"], "bogus: unknown key"),
    ("nan-lr", "papers.dmd2.train", lambda t: ["--set", "gen_lr=nan"], "gen_lr: nan is not a finite number"),
    ("inf-lr", "papers.dmd2.train", lambda t: ["--set", "fake_lr=inf"], "fake_lr: inf is not a finite number"),
    ("negative-seed", "papers.dmd2.train", lambda t: ["--set", "seed=-1"], "seed: -1 is out of range"),
    ("huge-seed", "papers.dmd2.train", lambda t: ["--set", "seed=99999999999999999999"], "seed:"),
    ("zero-batch", "papers.dmd2.train", lambda t: ["--set", "global_batch=0"], "global_batch: 0 is out of range"),
    ("huge-batch", "papers.dmd2.train", lambda t: ["--set", "global_batch=10000000000"], "global_batch:"),
    ("duplicate-key", "papers.dmd2.train", lambda t: ["--set", "steps=3", "steps=4"], "steps: set more than once"),
    ("not-an-int", "papers.dmd2.train", lambda t: ["--set", "steps=abc"], "steps: expected int"),
    ("bad-choice", "papers.dmd2.train", lambda t: ["--set", "task=nope"], "task: 'nope' is not allowed"),
    ("bad-precision", "papers.dmd2.train", lambda t: ["--set", "mixed_precision=fp8"], "mixed_precision:"),
    ("no-equals", "papers.dmd2.train", lambda t: ["--set", "steps"], "steps: expected key=value"),
    ("accumulation", "papers.dmd2.train", lambda t: ["--set", "per_device_batch=300"], "per_device_batch:"),
    ("steps-order", "papers.dmd2.train", lambda t: ["--set", "student_steps=5,10"], "student_steps:"),
    ("t-range", "papers.dmd2.train", lambda t: ["--set", "dm_t_lo=0.9", "dm_t_hi=0.1"], "dm_t_lo:"),
    (
        "out-dir-is-file",
        "papers.dmd2.train",
        lambda t: ["--set", f"out_dir={_file(t, 'f', 'x')}"],
        "out_dir:",
    ),
    (
        "results-dir-under-file",
        "papers.dmd2.train",
        lambda t: ["--set", f"results_dir={_file(t, 'f', 'x')}/sub"],
        "results_dir:",
    ),
    (
        "teacher-path-missing",
        "papers.dmd2.train",
        lambda t: ["--preset", "digits", "--set", f"teacher_path={t}/no-teacher"],
        "teacher_path:",
    ),
    (
        "teacher-path-ignored-by-smoke",
        "papers.dmd2.train",
        lambda t: ["--preset", "digits-smoke", "--set", f"teacher_path={t}/no-teacher"],
        "would ignore it",
    ),
    (
        "hub-teacher-not-cached",
        "papers.dmd2.train",
        lambda t: ["--preset", "digits", "--set", "teacher_path=no-such-org/no-such-model"],
        "not in the Hugging Face cache",
    ),
    (
        "real-data-missing",
        "papers.dmd2.train",
        lambda t: ["--preset", "sd15-smoke", "--set", f"real_data={t}/none"],
        "real_data:",
    ),
    (
        "real-data-empty",
        "papers.dmd2.train",
        lambda t: ["--preset", "sd15-smoke", "--set", f"real_data={_image_dir(t, 'empty')}"],
        "holds no images",
    ),
    (
        "real-data-corrupt",
        "papers.dmd2.train",
        lambda t: ["--preset", "sd15-smoke", "--set", f"real_data={_image_dir(t, 'corrupt')}"],
        "0.png is not a readable image",
    ),
    (
        "real-data-is-file",
        "papers.dmd2.train",
        lambda t: ["--preset", "sd15-smoke", "--set", f"real_data={_file(t, 'x.png', 'x')}"],
        "is not a folder of images",
    ),
    (
        "prompts-missing",
        "papers.dmd2.train",
        lambda t: ["--preset", "sd15-smoke", "--set", f"prompts={t}/prompts.txt"],
        "prompts:",
    ),
    (
        "prompts-empty",
        "papers.dmd2.train",
        lambda t: ["--preset", "sd15-smoke", "--set", f"prompts={_file(t, 'p.txt', '  ')}"],
        "is empty",
    ),
    ("mm-unknown-key", "papers.margin_mse.train", lambda t: ["--set", "bogus=1"], "bogus: unknown key"),
    ("mm-nan-seed", "papers.margin_mse.train", lambda t: ["--set", "seed=nan"], "seed: expected int"),
    ("mm-batch", "papers.margin_mse.train", lambda t: ["--set", "global_batch=-4"], "global_batch:"),
    ("stat-unknown-preset", "papers.stat.train", lambda t: ["--preset", "nope"], "preset:"),
    ("stat-duplicate", "papers.stat.train", lambda t: ["--set", "seed=1", "seed=2"], "seed: set more than once"),
    ("stat-precision", "papers.stat.train", lambda t: ["--set", "mixed_precision=int4"], "mixed_precision:"),
    ("stat-base-preset", "papers.stat.train", lambda t: ["--set", "base_preset=arith-longg"], "base_preset:"),
    ("stat-eval-sets", "papers.stat.train", lambda t: ["--preset", "math", "--set", "eval_sets=math501"], "eval_sets:"),
    ("build-malformed", "results.build", lambda t: ["--raw", str(_records(t, b"{bad"))], "malformed JSON"),
    ("build-not-utf8", "results.build", lambda t: ["--raw", str(_records(t, b"\xff\xfe\x00"))], "not UTF-8"),
    (
        "build-missing-key",
        "results.build",
        lambda t: ["--raw", str(_records(t, b'{"paper": "p"}'))],
        "misses required key",
    ),
    ("repro-no-folder", "results.repro", lambda t: [str(t / "nothing")], "fresh:"),
    ("plot-no-log", "results.plot", lambda t: [str(t)], "has no metrics.jsonl"),
]


def _records(tmp, content: bytes):
    d = tmp / "raw"
    d.mkdir()
    (d / "r.json").write_bytes(content)
    return d


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    _, module, argv_of, needle = case
    monkeypatch.setenv("DISTILL_DEBUG", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    argv = argv_of(tmp_path)
    if module.startswith("papers."):  # everything the run could write goes under tmp_path/w
        sets = [f"out_dir={tmp_path}/w/runs", f"results_dir={tmp_path}/w/res", f"cache_dir={tmp_path}/w/cache"]
        sets = [s for s in sets if s.split("=")[0] not in " ".join(argv)]
        fields = importlib.import_module(module.rsplit(".", 1)[0] + ".config").Config.__dataclass_fields__
        sets = [s for s in sets if s.split("=")[0] in fields]
        argv = argv + sets if "--set" in argv else [*argv, "--set", *sets]
    before = _files(tmp_path)
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        entry(main, argv)
    assert e.value.code == 2, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err
    assert _files(tmp_path) == before, "a bad input wrote files"


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30
