"""Config CLI: presets, overrides, dry run, and one-line errors that name the key."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import BaseConfig, ConfigError, batch_math, cfg_field, override, parse_cli

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Cfg(BaseConfig):
    lr: float = cfg_field(1e-3, "learning rate", min=0.0, max=1.0)
    kind: str = cfg_field("a", "variant", choices=("a", "b"))
    widths: tuple[int, ...] = cfg_field((8, 8), "layer widths")
    flag: bool = cfg_field(False, "a switch")


PRESETS = {"small": Cfg(steps=10, global_batch=8), "small-smoke": Cfg(steps=2, global_batch=4)}


def test_override_parses_types():
    cfg = override(PRESETS["small"], ["lr=0.5", "kind=b", "widths=4,5,6", "flag=true", "steps=3"])
    assert (cfg.lr, cfg.kind, cfg.widths, cfg.flag, cfg.steps) == (0.5, "b", (4, 5, 6), True, 3)


@pytest.mark.parametrize(
    "pair,needle",
    [
        ("lrr=1", "lrr: unknown key"),
        ("lr=abc", "lr: expected float"),
        ("lr=2", "lr: 2.0 is out of range"),
        ("kind=c", "kind: 'c' is not allowed"),
        ("steps=-1", "steps: -1 is out of range"),
        ("mixed_precision=fp8", "mixed_precision"),
        ("flag=maybe", "flag: expected bool"),
    ],
)
def test_bad_values_name_the_key(pair, needle):
    with pytest.raises(ConfigError, match=needle.split(":")[0]) as e:
        override(PRESETS["small"], [pair])
    assert needle in str(e.value)


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match="global_batch"):
        Cfg(global_batch=0)


def test_cli_errors_are_one_line_exit_2(capsys):
    for argv in (["--set", "lr=-1"], ["--preset", "nope"], ["--set", "bogus=1"]):
        with pytest.raises(SystemExit) as e:
            parse_cli(Cfg, PRESETS, argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err


def test_dry_run_prints_config_and_batch_math(capsys):
    with pytest.raises(SystemExit) as e:
        parse_cli(Cfg, PRESETS, ["--preset", "small", "--set", "per_device_batch=2", "--dry-run"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert '"preset": "small"' in out and "global 8 = per-device 2 x accumulation 4 x world size 1" in out


def test_batch_math():
    assert batch_math(64, 0, 2) == (32, 1)
    assert batch_math(64, 8, 2) == (8, 4)
    with pytest.raises(ConfigError, match="per_device_batch"):
        batch_math(64, 24, 2)
    with pytest.raises(ConfigError, match="global_batch"):
        batch_math(63, 0, 2)


def test_help_lists_keys_and_presets():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "tiny_train.py"), "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "presets: tiny" in out and "ckpt_every" in out and "global_batch" in out
