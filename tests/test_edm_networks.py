"""EDM network port (ADM / DDPM++ / NCSN++) and the converter from the official EDM pickles."""

from __future__ import annotations

import collections
import pickle
import sys
import types

import pytest
import torch

from common.diffusion.edm_convert import EDMPickleError, convert, load_edm_net, load_edm_pickle
from common.diffusion.edm_networks import PRESET_CONFIGS, EDMDenoiser, build_edm_net


@pytest.mark.parametrize(
    "name, expected",
    # EDM paper (Karras et al. 2022) Table 7: ADM on ImageNet-64 has 295.9M parameters, DDPM++ on CIFAR-10 55.7M.
    [("imagenet64-adm", 295.9e6), ("cifar10-ddpmpp", 55.7e6)],
)
def test_full_size_parameter_counts_match_the_paper(name, expected):
    with torch.device("meta"):
        net = build_edm_net(name)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - expected) < 0.05e6, n


def test_official_parameter_names_and_bottleneck():
    with torch.device("meta"):
        net = build_edm_net("imagenet64-adm")
    keys = set(net.state_dict())
    for k in (
        "model.map_label.weight",
        "model.enc.64x64_conv.weight",
        "model.enc.32x32_down.skip.resample_filter",
        "model.enc.8x8_block2.qkv.weight",
        "model.dec.8x8_in0.proj.weight",
        "model.dec.64x64_block3.affine.bias",
        "model.out_conv.weight",
    ):
        assert k in keys, k
    assert "model.map_label.bias" not in keys  # ADM's label map has no bias
    assert net.feature_channels == 768  # DMD2's GAN head width on ImageNet (App. F.1)


def test_mid_tap_is_the_encoder_output_and_can_stop_early():
    torch.manual_seed(0)
    net = build_edm_net("tiny-adm").eval()
    x, s, c = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 3.0]), torch.tensor([1, 2])
    p = net(x, s, c, taps=("mid",), pred=True)
    assert p.features["mid"].shape == (2, 64, 8, 8) and p.x0.shape == x.shape
    torch.testing.assert_close(p.eps, (x - p.x0) / s.view(-1, 1, 1, 1))
    q = net(x, s, c, taps=("mid",), pred=True, stop_after_taps=True)
    assert q.x0 is None
    torch.testing.assert_close(q.features["mid"], p.features["mid"])


@pytest.mark.parametrize("name", ["tiny-adm", "tiny-ddpmpp", "tiny-ncsnpp"])
def test_tiny_networks_forward_backward(name):
    torch.manual_seed(0)
    net = build_edm_net(name)
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    cond = torch.tensor([0, 3, 9]) if net.label_dim else None
    x0, feats = net(x, torch.tensor([0.01, 1.0, 80.0]), cond, return_features=True)
    assert x0.shape == x.shape and feats.shape == (3, net.feature_channels, 8, 8)
    assert torch.isfinite(x0).all()
    x0.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # EDM preconditioning: at sigma -> 0 the denoiser is the identity (c_skip -> 1, c_out -> 0)
    y = torch.randn(2, 3, 16, 16)
    out = net(y, torch.full((2,), 1e-6), cond[:2] if cond is not None else None)
    torch.testing.assert_close(out, y, atol=1e-4, rtol=0)


def test_class_labels_change_the_output_and_ints_equal_one_hot():
    torch.manual_seed(0)
    net = build_edm_net("tiny-ddpmpp").eval()
    for p in net.parameters():  # the near-zero output layer would hide the label path
        p.data.add_(0.05 * torch.randn_like(p))
    x, s = torch.randn(2, 3, 16, 16), torch.tensor([2.0, 2.0])
    a = net(x, s, torch.tensor([1, 1]))
    b = net(x, s, torch.nn.functional.one_hot(torch.tensor([1, 1]), 10).float())
    c = net(x, s, torch.tensor([4, 4]))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-6


# ---------------------------------------------------------------- an official-format pickle, written here

_PORT_NAMES = {"EDMDenoiser": "EDMPrecond"}


def _fake_edm_modules(monkeypatch):
    """`torch_utils.persistence` and `dnnlib.util` as the pickle *writer* needs them (never the converter)."""
    tu, pers = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dn, util = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - the converter must never call this
        raise AssertionError("the converter executed EDM's reconstruct hook")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    pers._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, EasyDict
    tu.persistence, dn.util = pers, util
    for name, mod in [("torch_utils", tu), ("torch_utils.persistence", pers), ("dnnlib", dn), ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return _reconstruct_persistent_obj, EasyDict


def write_official_format_pickle(net: EDMDenoiser, path, monkeypatch, extra=None):
    """Pickle `net` the way EDM's persistence module does: every module becomes
    `_reconstruct_persistent_obj({type, version, module_src, class_name, state})`."""
    reconstruct, EasyDict = _fake_edm_modules(monkeypatch)
    cfg = net.cfg

    class Writer(pickle.Pickler):
        def reducer_override(self, obj):
            if not isinstance(obj, torch.nn.Module):
                return NotImplemented
            state = {k: v for k, v in obj.__dict__.items() if k not in ("cfg", "taps")}
            state["_forward_hooks"] = collections.OrderedDict()  # our feature taps; EDM's pickles have no hooks
            if obj is net:
                state.update(use_fp16=False, sigma_min=0, sigma_max=float("inf"))
                state["_init_kwargs"] = EasyDict(
                    img_resolution=cfg.img_resolution, img_channels=cfg.img_channels, label_dim=cfg.label_dim
                )
            elif obj is net.model:
                state["_init_kwargs"] = EasyDict(
                    img_resolution=cfg.img_resolution,
                    in_channels=cfg.img_channels,
                    out_channels=cfg.img_channels,
                    label_dim=cfg.label_dim,
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.model_kwargs.items()},
                )
            else:
                state["_init_kwargs"] = EasyDict()
            state["_init_args"] = ()
            meta = dict(
                type="class",
                version=6,
                module_src="raise SystemExit('the embedded source must never run')",
                class_name=_PORT_NAMES.get(type(obj).__name__, type(obj).__name__),
                state=state,
            )
            return reconstruct, (meta,)

    with open(path, "wb") as f:
        Writer(f, protocol=4).dump({"ema": net, "dataset_kwargs": EasyDict(resolution=16), **(extra or {})})


@pytest.mark.parametrize("name", ["tiny-adm", "tiny-ddpmpp", "tiny-ncsnpp"])
def test_round_trip_through_the_converter(name, tmp_path, monkeypatch):
    torch.manual_seed(1)
    net = build_edm_net(name).eval()
    for p in net.parameters():  # zero-initialised output layers would hide a wrong mapping
        p.data.add_(0.05 * torch.randn_like(p))
    pkl = tmp_path / "edm-tiny.pkl"
    write_official_format_pickle(net, pkl, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")  # the converter needs no EDM modules
    monkeypatch.delitem(sys.modules, "dnnlib.util")
    out = convert(pkl, tmp_path / "converted")
    back = load_edm_net(out).eval()
    assert back.cfg.model_type == net.cfg.model_type and back.cfg.model_kwargs == net.cfg.model_kwargs
    sd, sd2 = net.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        torch.testing.assert_close(sd[k], sd2[k], rtol=0, atol=0)
    x, s = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 20.0])
    cond = torch.tensor([2, 7]) if net.label_dim else None
    torch.testing.assert_close(back(x, s, cond), net(x, s, cond))


def test_converter_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"ema": Evil()}))
    with pytest.raises(EDMPickleError, match="system"):
        load_edm_pickle(pkl)


def test_converter_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(EDMPickleError, match="does not exist"):
        load_edm_pickle(tmp_path / "missing.pkl")
    pkl = tmp_path / "plain.pkl"
    pkl.write_bytes(pickle.dumps({"ema": collections.OrderedDict(a=torch.zeros(1))}))
    with pytest.raises(EDMPickleError, match="only EDMPrecond"):
        convert(pkl, tmp_path / "out")
    with pytest.raises(EDMPickleError, match="no 'net'"):
        convert(pkl, tmp_path / "out", key="net")
    with pytest.raises(EDMPickleError, match="edm_convert"):
        load_edm_net(tmp_path / "nothing-here")


def test_presets_cover_the_paper_teachers():
    assert PRESET_CONFIGS["imagenet64-adm"].label_dim == 1000
    assert PRESET_CONFIGS["cifar10-ddpmpp"].model_type == "SongUNet"
