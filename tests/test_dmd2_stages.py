"""DMD2's multi-stage paper rows: presets that follow the official scripts, the weights-only continuation of the
fake score (init_from) and the SDXL FSDP config."""

from pathlib import Path

import pytest
import torch
from torch import nn

from common.checkpoint import Checkpointer
from common.diffusion.tasks import init_critic_from
from papers.dmd2.config import PRESETS

ROOT = Path(__file__).resolve().parent.parent


def test_presets_follow_the_official_scripts():
    assert PRESETS["imagenet64"].steps == 200_000 and PRESETS["imagenet64"].gan
    assert not PRESETS["imagenet64-nogan"].gan and PRESETS["imagenet64-nogan"].steps == 410_000
    longer = PRESETS["imagenet64-longer"]
    assert longer.gan and longer.gen_lr == longer.fake_lr == 5e-7 and longer.steps == 140_000
    assert not PRESETS["sd15"].gan and PRESETS["sd15"].gen_lr == 1e-5 and PRESETS["sd15"].gradient_checkpointing
    s2 = PRESETS["sd15-stage2"]
    assert s2.gan and s2.w_g == 1e-3 and s2.gen_lr == s2.fake_lr == 5e-7
    for name in ("sdxl", "sdxl4"):
        assert not PRESETS[name].gradient_checkpointing  # the official SDXL scripts do not use it


class _S:
    def __init__(self, fake, head):
        self.fake, self.head = fake, head


def test_init_critic_from_takes_the_fake_score_and_head_when_present(tmp_path):
    torch.manual_seed(0)
    fake, gen = nn.Linear(3, 2), nn.Linear(3, 3)
    Checkpointer(tmp_path / "checkpoints").save(5, {"generator": gen, "fake": fake})  # a no-GAN stage: no head
    S = _S(nn.Linear(3, 2), nn.Linear(2, 1))
    head_before = S.head.weight.clone()
    assert init_critic_from(S, str(tmp_path)) == ["fake"]
    assert torch.equal(S.fake.weight, fake.weight)
    assert torch.equal(S.head.weight, head_before)  # the GAN stage's head starts fresh, as in the official code
    assert init_critic_from(S, str(tmp_path / "checkpoints" / "missing-folder")) == []


def test_fsdp_config_parses_as_accelerate_fsdp():
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / "papers" / "dmd2" / "accelerate_fsdp_sdxl.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg["fsdp_config"]["fsdp_sharding_strategy"] == "HYBRID_SHARD"
    assert cfg["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert load_config_from_file(str(path)).distributed_type == "FSDP"


def test_sdxl_generator_starts_from_a_bare_unet_state_dict(tmp_path):
    """The official SDXL 1-step run starts its generator from a regression-pretrained UNet saved as a bare state dict
    (.bin); init_from loads such a file into the generator's backbone, strictly, and leaves the teacher alone."""
    import dataclasses

    from common.diffusion.tasks import ConfigError, build

    cfg = dataclasses.replace(PRESETS["sdxl-smoke"], cache_dir=str(tmp_path / "cache"))
    unet = build(cfg).generator.unet
    regressed = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in unet.state_dict().items()
    }
    torch.save(regressed, tmp_path / "regression_checkpoint_model_002000.bin")
    S = build(dataclasses.replace(cfg, init_from=str(tmp_path / "regression_checkpoint_model_002000.bin")))
    got = S.generator.unet.state_dict()
    assert all(torch.equal(got[k], regressed[k]) for k in regressed)
    teacher = S.teacher.unet.state_dict() if hasattr(S.teacher, "unet") else {}
    assert not teacher or not all(torch.equal(teacher[k], regressed[k]) for k in regressed if k in teacher)
    torch.save({k: v for k, v in list(regressed.items())[1:]}, tmp_path / "partial.bin")  # a key missing: refused
    with pytest.raises(ConfigError, match="does not fit the generator"):
        build(dataclasses.replace(cfg, init_from=str(tmp_path / "partial.bin")))
