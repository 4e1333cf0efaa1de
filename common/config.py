"""Typed, frozen experiment configs with presets and a small command line.

Every paper defines ``Config(BaseConfig)`` (a frozen dataclass) and ``PRESETS`` (name -> Config). Fields are declared
with :func:`cfg_field`, which records help text, allowed values and ranges; ``BaseConfig.__post_init__`` validates all
of them, so a bad value cannot exist as a config object. The command line is

    --preset NAME  --set key=value [key=value ...]  --dry-run  --list-presets  --help

The global batch is the contract: the per-device batch and gradient accumulation are derived from it and the world
size (:func:`batch_math`); the learning rate is never rescaled.

Left out: nested configs and config files. A preset is a Python object; a variant is ``--set`` or ``dataclasses.replace``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any


class UserInputError(ValueError):
    """Bad input the user can fix (a value, a path, a file); the message names it and says what to do.

    Entry points run through :func:`common.cli.entry`, which prints such errors as one line and exits with code 2.
    """


class ConfigError(UserInputError):
    """A config value is unknown, of the wrong type or out of range; the message names the key."""


# Every int field has at least this ceiling: larger values overflow the RNGs (torch seeds are 64-bit and some
# loops derive per-rank seeds as seed * 1000 + rank) and the tensor shapes long before they mean anything.
INT_CEILING = 2**31 - 1


def cfg_field(default: Any, help: str, *, choices=None, min=None, max=None):  # noqa: A002 - mirrors argparse
    """A dataclass field carrying its documentation and validity rules."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class BaseConfig:
    """Fields every experiment has. Papers subclass this and add their own."""

    preset: str = cfg_field("", "name of the preset this config came from")
    seed: int = cfg_field(0, "seed of every RNG (data, init, noise)", min=0, max=2**31 - 1)
    method: str = cfg_field("", "the compared variant (e.g. dmd2, dm-only); names the run and the result record")
    out_dir: str = cfg_field("runs", "root folder of run folders")
    run_name: str = cfg_field("", "run folder name under out_dir/<paper>/; default <preset>/<method>-seed<seed>")
    results_dir: str = cfg_field("results/raw", "where evaluation writes result records")
    global_batch: int = cfg_field(64, "examples per optimizer step over all processes (the contract)", min=1, max=2**20)
    per_device_batch: int = cfg_field(
        0, "examples per forward pass on one process; 0 = global_batch / world_size (no accumulation)", min=0, max=2**20
    )
    mixed_precision: str = cfg_field("no", "autocast precision of the forward pass", choices=("no", "fp16", "bf16"))
    steps: int = cfg_field(1000, "optimizer steps", min=0)
    log_every: int = cfg_field(50, "steps between metric log lines", min=1)
    ckpt_every: int = cfg_field(0, "steps between checkpoints; 0 = only at the end", min=0)
    keep_ckpts: int = cfg_field(2, "checkpoints kept on disk", min=1)
    trackers: str = cfg_field(
        "", "experiment trackers: '' or 'tensorboard' (nothing online)", choices=("", "tensorboard")
    )

    def __post_init__(self):
        validate(self)
        self.check()

    def check(self) -> None:
        """Cross-field rules; subclasses override and raise ConfigError("key: ...")."""

    def check_inputs(self) -> None:
        """Check what the run reads and writes before anything is downloaded, loaded or trained.

        Called by :func:`parse_cli` (also under ``--dry-run``). The base checks that ``out_dir`` and
        ``results_dir`` can be written; papers extend it for their files (data folders, prompt files, model
        paths), using the helpers in :mod:`common.inputs`. Nothing is written here.
        """
        from common.inputs import require_writable_dir

        require_writable_dir("out_dir", self.out_dir)
        require_writable_dir("results_dir", self.results_dir)

    @property
    def resolved_run_name(self) -> str:
        return self.run_name or f"{self.preset or 'custom'}/{self.method or 'default'}-seed{self.seed}"


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp):
    """Unwrap Optional[T] / T | None to (T, allows_none)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_ok(value, tp) -> bool:
    tp, allows_none = _base_type(tp)
    if value is None:
        return allows_none
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def validate(cfg) -> None:
    """Check every field's type, allowed values and range; raise ConfigError naming the key."""
    hints = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        tp = hints[f.name]
        if not _type_ok(value, tp):
            raise ConfigError(f"{f.name}: expected {_type_name(tp)}, got {value!r}")
        meta = f.metadata
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}: {value!r} is not a finite number")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{f.name}: {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}")
        lo, hi = meta.get("min"), meta.get("max")
        if isinstance(value, int) and not isinstance(value, bool) and hi is None:
            hi = INT_CEILING
        if value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
                raise ConfigError(f"{f.name}: {value!r} is out of range; allowed {rng}")


def parse_value(cls, key: str, text: str):
    """Parse the string of ``--set key=value`` into the field's declared type."""
    names = {f.name for f in dataclasses.fields(cls)}
    if key not in names:
        close = [n for n in sorted(names) if key.lower() in n or n in key.lower()]
        hint = f" (did you mean {', '.join(close)}?)" if close else f"; known keys: {', '.join(sorted(names))}"
        raise ConfigError(f"{key}: unknown key{hint}")
    tp, allows_none = _base_type(_field_types(cls)[key])
    if allows_none and text.lower() in ("none", "null"):
        return None
    try:
        if tp is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if typing.get_origin(tp) is tuple:
            items = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
            args = typing.get_args(tp)
            elem = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
            if len(elem) != len(items):
                raise ValueError(text)
            return tuple(e(i.strip()) for e, i in zip(elem, items))
    except ValueError:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {text!r}") from None
    raise ConfigError(f"{key}: cannot be set from the command line")


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def override(cfg, pairs: list[str]):
    """Apply ``key=value`` strings to a config (validated by the dataclass)."""
    changes = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{pair}: expected key=value")
        key, text = pair.split("=", 1)
        key = key.strip()
        if key in changes:
            raise ConfigError(f"{key}: set more than once in --set; give each key once")
        changes[key] = parse_value(type(cfg), key, text.strip())
    return dataclasses.replace(cfg, **changes)


def batch_math(global_batch: int, per_device_batch: int, world_size: int) -> tuple[int, int]:
    """Derive (per-device batch, gradient accumulation) from the global batch; assert they multiply back."""
    if per_device_batch == 0:
        if global_batch % world_size:
            raise ConfigError(f"global_batch: {global_batch} is not divisible by world size {world_size}")
        per_device_batch = global_batch // world_size
    if global_batch % (per_device_batch * world_size):
        raise ConfigError(
            f"per_device_batch: global_batch {global_batch} is not a multiple of per_device_batch {per_device_batch} "
            f"x world size {world_size}"
        )
    accum = global_batch // (per_device_batch * world_size)
    assert per_device_batch * accum * world_size == global_batch
    return per_device_batch, accum


def _debug_env() -> bool:
    import os

    return os.environ.get("DISTILL_DEBUG", "") not in ("", "0")


def _world_size_hint() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def describe_fields(cls, base=None) -> str:
    """One line per field: type, value (the preset's when ``base`` is given, else the dataclass default), rules."""
    lines = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        extra = []
        if meta.get("choices") is not None:
            extra.append("one of " + ", ".join(map(repr, meta["choices"])))
        if meta.get("min") is not None or meta.get("max") is not None:
            extra.append(f"range [{meta.get('min', '')}, {meta.get('max', '')}]".replace("None", ""))
        if base is not None:
            default = getattr(base, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
        more = f"; {'; '.join(extra)}" if extra else ""
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r}{more}): {meta.get('help', '')}")
    return "\n".join(lines)


def parse_cli(cls, presets: dict, argv: list[str] | None = None, description: str | None = None):
    """Resolve a config from ``--preset`` and ``--set``; handle ``--dry-run``, ``--list-presets`` and errors.

    Errors print one line ``error: ...`` on stderr and exit with code 2.
    """
    names = list(presets)
    # `--preset X --help` documents X's values, not the dataclass defaults
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=names[0])
    chosen = pre.parse_known_args(argv)[0].preset
    shown = presets.get(chosen, presets[names[0]])
    epilog = (
        "presets: "
        + ", ".join(names)
        + f"\n\nkeys for --set (defaults shown are those of preset {chosen if chosen in presets else names[0]!r}):\n"
        + describe_fields(cls, base=shown)
        + "\n\nBad input ends with one line 'error: ...' and exit code 2; add --debug (or DISTILL_DEBUG=1) for a traceback."
    )
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default=names[0], help=f"named configuration (default {names[0]!r})")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override fields")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and batch math, then exit")
    parser.add_argument("--list-presets", action="store_true", help="list preset names and exit")
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, p in presets.items():
            print(f"{name}: steps={p.steps} global_batch={p.global_batch}")
        raise SystemExit(0)
    try:
        if args.preset not in presets:
            raise ConfigError(f"preset: {args.preset!r} does not exist; choose one of {', '.join(names)}")
        cfg = dataclasses.replace(presets[args.preset], preset=args.preset)
        cfg = override(cfg, args.set)
        world = _world_size_hint()
        per_device, accum = batch_math(cfg.global_batch, cfg.per_device_batch, world)
        cfg.check_inputs()
    except UserInputError as e:
        if args.debug or _debug_env():
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.dry_run:
        print(json.dumps(config_to_dict(cfg), indent=2, default=str))
        print(f"batch: global {cfg.global_batch} = per-device {per_device} x accumulation {accum} x world size {world}")
        raise SystemExit(0)
    return cfg
