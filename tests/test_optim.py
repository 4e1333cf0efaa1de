"""common/optim.py: parameter groups and warm-up schedules."""

import math

import pytest
import torch

from common.optim import param_groups, warmup_cosine, warmup_linear_decay


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)
        self.classifier = torch.nn.Linear(4, 1)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_split_heads_and_skip_frozen():
    net = _Net()
    body, head = param_groups(net, lr=1e-3, head_mult=10.0, wd=0.01)
    assert {id(p) for p in body["params"]} == {id(p) for p in net.encoder.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in net.classifier.parameters()}
    assert body["lr"] == 1e-3 and head["lr"] == pytest.approx(1e-2) and body["weight_decay"] == 0.01
    torch.optim.AdamW([body, head])  # a valid optimiser spec
    only_body = param_groups(net, 1e-3, 10.0, 0.0, head_names=())
    assert not only_body[1]["params"] and len(only_body[0]["params"]) == 4


def test_warmup_linear_decay_shape():
    f = warmup_linear_decay(10, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(0.91)
    assert f(50) == pytest.approx(0.5) and f(100) == 0.0 and f(150) == 0.0
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_warmup_cosine_shape():
    f = warmup_cosine(10, 110, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
