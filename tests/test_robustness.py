"""Bad input and broken state: one-line errors, corrupt checkpoints, record identity, caches, logs, claim verdicts."""

import json
import os

import pytest
import torch

from common.checkpoint import Checkpointer, CheckpointError, atomic_dir, complete_dir
from common.cli import entry
from common.config import BaseConfig, ConfigError, UserInputError, override, parse_cli
from common.inputs import require_file, require_image_dir, require_model, require_writable_dir
from common.results import RecordError, load_records, make_record, record_path, write_record
from results import build
from tests.test_config import PRESETS, Cfg


def record(seed=0, method="a", value=1.0, cfg=None, **kw):
    args = dict(
        paper="p",
        preset="toy",
        method=method,
        seed=seed,
        benchmark="bench",
        dataset="toy2d",
        metrics={"fd": value},
        protocol={"samples": 10},
        config=cfg or BaseConfig(preset="toy"),
        wall_time_s=1.0,
    )
    args.update(kw)
    return make_record(**args)


# ---- config values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair,needle", [("lr=nan", "lr: nan"), ("lr=inf", "lr: inf"), ("lr=-inf", "lr: -inf")])
def test_non_finite_floats_are_rejected(pair, needle):
    with pytest.raises(ConfigError, match=needle):
        override(PRESETS["small"], [pair])


@pytest.mark.parametrize("pair", ["seed=99999999999999999999", "global_batch=99999999999", "steps=10**30"])
def test_huge_ints_are_rejected(pair):
    with pytest.raises(ConfigError, match=pair.split("=")[0]):
        override(PRESETS["small"], [pair])


def test_duplicated_set_key_is_an_error():
    with pytest.raises(ConfigError, match="steps: set more than once"):
        override(PRESETS["small"], ["steps=3", "steps=4"])


def test_help_after_preset_shows_its_values(capsys):
    with pytest.raises(SystemExit):
        parse_cli(Cfg, PRESETS, ["--preset", "small-smoke", "--help"])
    out = capsys.readouterr().out
    assert "steps (int, default 2" in out and "preset 'small-smoke'" in out
    with pytest.raises(SystemExit):
        parse_cli(Cfg, PRESETS, ["--help"])
    assert "steps (int, default 10" in capsys.readouterr().out


def test_unwritable_out_dir_fails_before_anything_is_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        parse_cli(Cfg, PRESETS, ["--set", f"out_dir={blocker}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out_dir:") and "\n" not in err
    with pytest.raises(SystemExit):
        parse_cli(Cfg, PRESETS, ["--set", f"results_dir={blocker}/sub"])
    assert "results_dir" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---- input helpers -----------------------------------------------------------------------------------------------


def test_input_helpers_name_the_key_and_path(tmp_path):
    with pytest.raises(UserInputError, match="prompts: .*does not exist"):
        require_file("prompts", str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserInputError, match="prompts: .*is empty"):
        require_file("prompts", str(tmp_path / "empty.txt"))
    with pytest.raises(UserInputError, match="real_data: .*does not exist"):
        require_image_dir("real_data", str(tmp_path / "nope"))
    (tmp_path / "imgs").mkdir()
    with pytest.raises(UserInputError, match="real_data: .*holds no images"):
        require_image_dir("real_data", str(tmp_path / "imgs"))
    (tmp_path / "imgs" / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(UserInputError, match="a.png is not a readable image"):
        require_image_dir("real_data", str(tmp_path / "imgs"))
    from PIL import Image

    (tmp_path / "imgs" / "a.png").unlink()
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "b.png")
    assert len(require_image_dir("real_data", str(tmp_path / "imgs"))) == 1
    with pytest.raises(UserInputError, match="out_dir: .*is a file"):
        require_writable_dir("out_dir", str(tmp_path / "empty.txt"))


def test_missing_model_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="teacher_path: .*does not exist"):
        require_model("teacher_path", str(tmp_path / "my-teacher"))
    with pytest.raises(UserInputError, match="teacher_path: ./runs/x/y does not exist"):
        require_model("teacher_path", "./runs/x/y")
    with pytest.raises(UserInputError, match="not in the Hugging Face cache"):
        require_model("student_base", "no-such-org/no-such-model")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert require_model("student_base", str(tmp_path / "m")) == str(tmp_path / "m")


# ---- the entry guard ---------------------------------------------------------------------------------------------


def test_entry_turns_user_errors_into_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_DEBUG", "0")  # restored after the test, whatever --debug set

    def bad(argv):
        raise UserInputError("real_data: /x does not exist\n(second line)")

    with pytest.raises(SystemExit) as e:
        entry(bad, [])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: real_data: /x does not exist (second line)\n"

    def bug(argv):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        entry(bug, [])
    with pytest.raises(UserInputError):  # --debug shows the traceback
        entry(bad, ["--debug"])


# ---- checkpoints -------------------------------------------------------------------------------------------------


def _ckpts(tmp_path):
    net = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path / "ck", keep=3)
    ck.save(1, {"net": net})
    with torch.no_grad():
        net.weight.add_(1.0)
    ck.save(2, {"net": net})
    return ck, net


@pytest.mark.parametrize("damage", ["truncate", "empty", "random"])
def test_corrupt_latest_checkpoint_falls_back_to_an_older_one(tmp_path, capsys, damage):
    ck, net = _ckpts(tmp_path)
    latest = ck.latest()
    data = latest.read_bytes()
    latest.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "random": os.urandom(4096)}[damage])
    fresh = torch.nn.Linear(2, 2)
    step, _ = Checkpointer(tmp_path / "ck").resume({"net": fresh})
    assert step == 1
    assert latest.name in capsys.readouterr().err
    assert not torch.equal(fresh.weight, net.weight)  # the older state, not the damaged newer one


def test_no_intact_checkpoint_is_one_error_naming_the_files(tmp_path):
    ck, _ = _ckpts(tmp_path)
    for p in ck.all():
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint .*ckpt-00000001.pt"):
        Checkpointer(tmp_path / "ck").resume({"net": torch.nn.Linear(2, 2)})


def test_world_size_mismatch_is_a_checkpoint_error(tmp_path):
    ck, _ = _ckpts(tmp_path)
    payload = torch.load(ck.latest(), weights_only=False)
    payload["world_size"] = 2
    torch.save(payload, ck.latest())
    with pytest.raises(CheckpointError, match="world size 2"):
        Checkpointer(tmp_path / "ck").resume({"net": torch.nn.Linear(2, 2)})


def test_atomic_dir_leaves_old_folder_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "student"
    with atomic_dir(target) as d:
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"w")
    assert complete_dir(target)
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "config.json").write_text('{"new": 1}')
        raise RuntimeError("killed before the weights")
    assert (target / "config.json").read_text() == "{}" and complete_dir(target)
    assert [p.name for p in tmp_path.iterdir()] == ["student"]
    (target / "model.safetensors").unlink()
    assert not complete_dir(target)


# ---- records -----------------------------------------------------------------------------------------------------


def test_run_name_gives_a_record_its_own_file(tmp_path):
    a = write_record(record(), root=tmp_path)
    b = write_record(record(cfg=BaseConfig(preset="toy", run_name="variant")), root=tmp_path)
    assert a != b and b.name == "a-seed0--variant.json"
    assert len(load_records(tmp_path)) == 2


def test_record_of_a_different_config_is_not_overwritten(tmp_path):
    write_record(record(value=1.0), root=tmp_path)
    write_record(record(value=2.0, cfg=BaseConfig(preset="toy", out_dir="./runs")), root=tmp_path)  # where, not what
    with pytest.raises(RecordError, match="different config .*steps"):
        write_record(record(value=3.0, cfg=BaseConfig(preset="toy", steps=7)), root=tmp_path)
    assert load_records(tmp_path)[0]["metrics"]["fd"] == 2.0
    write_record(record(value=4.0, cfg=BaseConfig(preset="toy", steps=7)), root=tmp_path, same_config=False)
    assert load_records(tmp_path)[0]["metrics"]["fd"] == 4.0


def test_timings_leave_the_metrics():
    rec = record(metrics={"fd": 1.0, "throughput vs teacher": 20.0, "latency_ms_student": 3.0, "eval_time_s": 9.0})
    assert rec["metrics"] == {"fd": 1.0}
    assert set(rec["timing"]) == {"throughput vs teacher", "latency_ms_student", "eval_time_s"}


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b'{"paper": "p"}', "misses required key"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_records_name_the_file_and_build_exits_2(tmp_path, capsys, monkeypatch, content, needle):
    monkeypatch.setenv("DISTILL_DEBUG", "0")
    monkeypatch.setattr(build, "RAW_ROOT", tmp_path)
    (tmp_path / "bad.json").write_bytes(content)
    with pytest.raises(RecordError, match=f"bad.json.*{needle}"):
        load_records(tmp_path)
    with pytest.raises(SystemExit) as e:
        entry(build.main, ["--raw", str(tmp_path), "--out", str(tmp_path / "out.md")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json" in err and err.count("\n") == 1
    assert not (tmp_path / "out.md").exists()


# ---- logs and tables ---------------------------------------------------------------------------------------------


def test_metrics_log_has_each_step_once_after_a_resume(tmp_path):
    from common.launch import Run

    class Acc:
        is_main_process = True

    cfg = BaseConfig()
    run = Run(accelerator=Acc(), cfg=cfg, paper="p", dir=tmp_path, per_device_batch=1, grad_accum=1)
    for s in (0, 10, 20, 30):
        run.log(s, loss=1.0)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "lo')  # torn line of a killed run
    resumed = Run(accelerator=Acc(), cfg=cfg, paper="p", dir=tmp_path, per_device_batch=1, grad_accum=1)
    for s in (20, 30, 40):  # resumed from the checkpoint at step 20
        resumed.log(s, loss=2.0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 10, 20, 30, 40]


def test_natural_row_order():
    names = ["ttur10", "ttur1", "ttur5"]
    assert sorted(names, key=build.natural_key) == ["ttur1", "ttur5", "ttur10"]


def test_claim_verdicts(tmp_path):
    raw = tmp_path / "raw"
    for seed, (m, b) in enumerate([(1.0, 2.0), (1.1, 2.2), (0.9, 1.9)]):
        write_record(record(seed=seed, method="new", value=m), root=raw)
        write_record(record(seed=seed, method="old", value=b), root=raw)
        write_record(record(seed=seed, method="gate", value=0.5), root=raw)
    claims = tmp_path / "claims.toml"
    claims.write_text(
        '[[p]]\nclaim = "new is lower"\nbenchmark = "bench"\nmethod = "new"\nbaseline = "old"\nmetric = "fd"\n'
        'better = "lower"\n\n'
        '[[p]]\nclaim = "new is higher"\nbenchmark = "bench"\nmethod = "new"\nbaseline = "old"\nmetric = "fd"\n\n'
        '[[p]]\nclaim = "gated"\nbenchmark = "bench"\nmethod = "new"\nbaseline = "old"\nmetric = "fd"\n'
        'better = "lower"\ngates = [{name = "G1", benchmark = "bench", method = "gate", metric = "fd", min = 0.9}]\n'
    )
    text = build.build(raw, tmp_path / "none.toml", tmp_path / "none.toml", claims)
    rows = [line for line in text.splitlines() if line.startswith("| new is") or line.startswith("| gated")]
    assert rows[0].endswith("| 3 | reproduced |") and "-1.033 ± 0.05774" in rows[0]
    assert rows[1].endswith("| 3 | not reproduced |")
    assert rows[2].endswith("| untestable: gate G1 failed |")
    assert "G1: FAILED (0.5, 0.5, 0.5)" in text


def test_record_path_is_stable_for_default_runs():
    rec = record()
    assert record_path(rec, "R").as_posix() == "R/p/toy/a-seed0.json"


def test_repro_check_compares_with_committed_spread(tmp_path):
    from results import repro

    committed, fresh = tmp_path / "committed", tmp_path / "fresh"
    for seed, v in enumerate([1.0, 1.2, 1.1]):
        write_record(record(seed=seed, value=v), root=committed)
    write_record(record(seed=0, value=1.0), root=fresh)
    text, counts = repro.compare(fresh, committed)
    assert "| bench | a | fd | 1 | 1.1 ± 0.1 (n=3) | — | identical |" in text
    write_record(record(seed=0, value=1.15), root=fresh, same_config=False)
    assert repro.compare(fresh, committed)[1] == {"within spread": 1}
    write_record(record(seed=0, value=5.0), root=fresh, same_config=False)
    assert repro.compare(fresh, committed)[1] == {"outside spread": 1}


def test_plot_draws_curves_from_metrics_jsonl(tmp_path):
    from results import plot

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "time_s": 0.1 * s, "loss": 1.0 / (s + 1), "note": "x"} for s in range(5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')
    out = plot.plot([run], None, "step", tmp_path / "c.png")
    assert out.exists() and out.stat().st_size > 1000
    with pytest.raises(UserInputError, match="no metrics.jsonl"):
        plot.read_metrics(tmp_path / "none")
