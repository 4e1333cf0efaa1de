"""Convert NVlabs EDM network pickles into safetensors state dicts for `common.diffusion.edm_networks`.

    python -m common.diffusion.edm_convert edm-imagenet-64x64-cond-adm.pkl runs/cache/edm-imagenet64-adm
    python -m common.diffusion.edm_convert edm-cifar10-32x32-cond-vp.pkl runs/cache/edm-cifar10-ddpmpp

The official pickles (https://github.com/NVlabs/edm, "Pre-trained models") are a dict whose `ema` entry is the
network. Each module was pickled by EDM's `torch_utils.persistence`: the pickle calls
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the module's Python *source*,
its class name and its state (`__dict__`), and the official loader executes that source. We use neither stub
modules nor the source: a restricted unpickler resolves an allow-list of globals only (torch's tensor
rebuilders, `collections.OrderedDict`, numpy's array rebuilders, EDM's `EasyDict` as a plain dict) and maps
`_reconstruct_persistent_obj` to a function that records (class name, state) without running anything; any
other global is refused with an error that names it. Storage bytes are read with `torch.load(weights_only=True)`.
The parameters and buffers are then collected by walking the recorded module tree, and the architecture is read
from the backbone's recorded constructor arguments, so the converted folder rebuilds the exact network.

Output folder: `model.safetensors` (the EDMPrecond state dict: `model.enc.64x64_conv.weight`, ...) and
`config.json` (`{"kind": "edm", "net": EDMNetConfig fields, "source": ...}`), written atomically.
Left out: the VP / VE / iDDPM-preconditioned pickles (only EDMPrecond networks are converted).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

from common.diffusion.edm_networks import ARCHS, EDMDenoiser, EDMNetConfig

__all__ = ["load_edm_pickle", "edm_pickle_to_state_dict", "convert", "save_edm_net", "load_edm_net", "EDMPickleError"]


class EDMPickleError(RuntimeError):
    """The file is not an EDM network pickle we can convert, or it asks for a global we do not allow."""


class PersistentObject:
    """What `_reconstruct_persistent_obj` would have built, kept as data: class name and state."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
            raise EDMPickleError("persistent object with an unexpected meta record (not an EDM pickle?)")
        self.class_name = meta.get("class_name", "?")
        self.state = dict(meta["state"])

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"


def _load_storage(b: bytes):
    return torch.load(io.BytesIO(b), weights_only=True)


class _EasyDict(dict):
    """EDM's dnnlib.util.EasyDict, as the plain dict it is."""


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentObject,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}
_NUMPY = {"_reconstruct", "scalar", "ndarray", "dtype"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch",) and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.split(".")[0] == "numpy" and name in _NUMPY:
            import numpy

            core = getattr(numpy, "_core", None) or numpy.core
            return {
                "_reconstruct": core.multiarray._reconstruct,
                "scalar": core.multiarray.scalar,
                "ndarray": numpy.ndarray,
                "dtype": numpy.dtype,
            }[name]
        raise EDMPickleError(
            f"the pickle asks for the global {module}.{name}, which the EDM converter does not allow "
            "(only EDM network pickles are supported)"
        )


def load_edm_pickle(path) -> dict:
    """Unpickle an EDM network pickle without executing its embedded source; networks come back as
    PersistentObject trees."""
    path = Path(path)
    if not path.is_file():
        raise EDMPickleError(
            f"{path} does not exist; download it from https://github.com/NVlabs/edm (Pre-trained models), "
            "e.g. edm-imagenet-64x64-cond-adm.pkl"
        )
    with open(path, "rb") as f:
        data = _RestrictedUnpickler(f).load()
    if not isinstance(data, dict):
        raise EDMPickleError(f"{path}: expected a dict with an 'ema' network, got {type(data).__name__}")
    return data


def _collect(obj: PersistentObject, prefix: str, out: dict) -> None:
    st = obj.state
    skip = set(st.get("_non_persistent_buffers_set", ()))
    for k, v in (st.get("_parameters") or {}).items():
        if v is not None:
            out[prefix + k] = v.detach().clone().contiguous()
    for k, v in (st.get("_buffers") or {}).items():
        if v is not None and k not in skip:
            out[prefix + k] = v.detach().clone().contiguous()
    for k, m in (st.get("_modules") or {}).items():
        if m is None:
            continue
        if not isinstance(m, PersistentObject):
            raise EDMPickleError(f"submodule {prefix + k} is a {type(m).__name__}, not a persistent EDM module")
        _collect(m, f"{prefix}{k}.", out)


def edm_pickle_to_state_dict(data: dict, key: str = "ema") -> tuple[dict, EDMNetConfig]:
    """(state dict, network config) of the network stored under `key` of an unpickled EDM file."""
    if key not in data:
        raise EDMPickleError(f"no {key!r} entry in the pickle (entries: {sorted(data)})")
    net = data[key]
    if not isinstance(net, PersistentObject) or net.class_name != "EDMPrecond":
        name = getattr(net, "class_name", type(net).__name__)
        raise EDMPickleError(f"{key!r} is a {name}; only EDMPrecond networks are converted")
    model = net.state.get("_modules", {}).get("model")
    if not isinstance(model, PersistentObject) or model.class_name not in ARCHS:
        name = getattr(model, "class_name", type(model).__name__)
        raise EDMPickleError(f"backbone {name} not in {sorted(ARCHS)}")
    kw = dict(model.state.get("_init_kwargs") or {})
    if not kw or model.state.get("_init_args"):
        raise EDMPickleError("the backbone's constructor arguments are not recorded (not an EDM pickle?)")
    for k in ("img_resolution", "in_channels", "out_channels", "label_dim"):
        kw.pop(k, None)
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}
    st = net.state
    cfg = EDMNetConfig(
        model_type=model.class_name,
        img_resolution=int(st["img_resolution"]),
        img_channels=int(st["img_channels"]),
        label_dim=int(st.get("label_dim", 0)),
        sigma_data=float(st.get("sigma_data", 0.5)),
        model_kwargs=kw,
    )
    sd: dict = {}
    _collect(net, "", sd)
    return sd, cfg


def save_edm_net(state_dict: dict, cfg: EDMNetConfig, path, source: str = "") -> Path:
    """Write `model.safetensors` + `config.json` atomically (temporary folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save_file({k: v.float().contiguous() for k, v in state_dict.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"kind": "edm", "net": cfg.to_dict(), "source": source}, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_edm_net(path, **overrides) -> EDMDenoiser:
    """Rebuild a converted network; every key must match. `overrides` replace backbone kwargs (e.g. dropout=0)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EDMPickleError(
            f"{path} is not a converted EDM network (no config.json); make it with "
            f"`python -m common.diffusion.edm_convert <edm pickle> {path}`"
        )
    meta = json.loads(cfg_file.read_text())
    if meta.get("kind") != "edm":
        raise EDMPickleError(f"{path}: kind {meta.get('kind')!r}, expected 'edm'")
    c = meta["net"]
    c["model_kwargs"] = {
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in c["model_kwargs"].items()},
        **overrides,
    }
    net = EDMDenoiser(EDMNetConfig(**c))
    missing, unexpected = net.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise EDMPickleError(f"{path}: missing keys {missing[:5]}..., unexpected keys {unexpected[:5]}...")
    return net


def convert(pickle_path, out_dir, key: str = "ema") -> Path:
    sd, cfg = edm_pickle_to_state_dict(load_edm_pickle(pickle_path), key)
    out = save_edm_net(sd, cfg, out_dir, source=Path(pickle_path).name)
    load_edm_net(out)  # fail now, not at training time, if the folder does not rebuild the network
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pickle", help="an official EDM network pickle (e.g. edm-imagenet-64x64-cond-adm.pkl)")
    p.add_argument("out_dir", help="output folder (model.safetensors + config.json)")
    p.add_argument("--key", default="ema", help="entry of the pickle to convert (default: ema)")
    args = p.parse_args(argv)
    try:
        out = convert(args.pickle, args.out_dir, args.key)
    except EDMPickleError as e:
        raise SystemExit(f"error: {e}") from None
    n = sum(v.numel() for v in load_edm_net(out).state_dict().values())
    print(json.dumps({"out": str(out), "tensors_numel": n}))


if __name__ == "__main__":
    main()
