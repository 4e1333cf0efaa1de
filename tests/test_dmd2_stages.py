"""DMD2's multi-stage paper rows: presets that follow the official scripts, the weights-only continuation of the
fake score (init_from) and the SDXL FSDP config."""

from pathlib import Path

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
