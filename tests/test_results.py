"""Result records are validated, written atomically, and the committed results table is not stale."""

import json

import pytest

from common.config import BaseConfig
from common.results import RecordError, load_records, make_record, validate_record, write_record
from results import build


def record(seed=0, method="a", value=1.0, **kw):
    args = dict(
        paper="p",
        preset="toy",
        method=method,
        seed=seed,
        benchmark="bench",
        dataset="toy2d",
        metrics={"fd": value},
        protocol={"samples": 10},
        config=BaseConfig(preset="toy"),
        wall_time_s=1.0,
    )
    args.update(kw)
    return make_record(**args)


def test_make_record_has_required_keys_and_commit():
    rec = record()
    for key in ("paper", "preset", "method", "seed", "metrics", "protocol", "config", "git_commit", "wall_time_s"):
        assert key in rec
    assert rec["config"]["preset"] == "toy"


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r.pop("seed"), "seed"),
        (lambda r: r.update(metrics={"fd": float("nan")}), "not finite"),
        (lambda r: r.update(metrics={}), "no metrics"),
        (lambda r: r.update(bogus=1), "unknown record key"),
        (lambda r: r.update(seed="0"), "seed"),
    ],
)
def test_invalid_records_are_rejected(mutate, needle):
    rec = record()
    mutate(rec)
    with pytest.raises(RecordError, match=needle):
        validate_record(rec)


def test_write_and_build_table(tmp_path):
    for seed, v in enumerate([1.0, 2.0, 3.0]):
        write_record(record(seed=seed, value=v), root=tmp_path / "raw")
    write_record(record(method="b", value=5.0), root=tmp_path / "raw")
    assert len(load_records(tmp_path / "raw")) == 4
    assert not list((tmp_path / "raw").rglob("*.tmp"))
    numbers = tmp_path / "numbers.toml"
    numbers.write_text(
        '[[p]]\nbenchmark = "B"\nmethod = "a"\nmetric = "fd"\nvalue = 1.5\nsource = "Table 1"\n'
        'ours_benchmark = "bench"\n\n[[p]]\nbenchmark = "Big"\nmethod = "a"\nmetric = "fd"\n'
        'value = 9.0\nsource = "Table 2"\n'
    )
    text = build.build(tmp_path / "raw", numbers)
    assert "| p | a | toy | 3 (0,1,2) | 2 ± 1 |" in text
    assert "| p | b | toy | 1 (0) | 5 |" in text
    assert "| B | a | fd | 1.5 | Table 1 | 2 ± 1 (n=3; bench) | 0.5 |" in text
    assert "| Big | a | fd | 9 | Table 2 | not run here | — |" in text
    assert "Protocol: samples: 10" in text


def test_corrupt_record_names_file(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"paper": "p"}))
    with pytest.raises(RecordError, match="x.json"):
        load_records(tmp_path)


def test_committed_results_tables_are_fresh():
    assert build.README.read_text() == build.build(), "results/README.md is stale: run `python -m results.build`"
    assert build.TOP_README.read_text() == build.top_readme(), "README.md is stale: run `python -m results.build`"


def test_summary_names_the_preset_when_a_benchmark_runs_at_several():
    one = [record(method="a", value=1.0), record(method="b", value=2.0)]
    assert "| bench | a | 1 | fd 1 |" in build.summary(one)
    two = [*one, record(method="a", value=3.0, preset="toy-wallclock", config=BaseConfig(preset="toy-wallclock"))]
    text = build.summary(two)
    assert "| bench | a (toy) | 1 | fd 1 |" in text and "| bench | a (toy-wallclock) | 1 | fd 3 |" in text
