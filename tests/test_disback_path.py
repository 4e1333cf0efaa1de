"""DisBack's path manager: recording, reverse order, switching, ending at the teacher, strict loading, resume."""

import pytest
import torch
from torch import nn

from papers.disback.path import PathError, TeacherPath, load_weights_strict, stage2_nodes, target_node


class _Denoiser(nn.Module):
    """A stand-in with the denoiser call signature net(x_t, t, cond)."""

    def __init__(self, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t=None, cond=None):
        return self.body(x)


def _net(seed=0, width=8):
    torch.manual_seed(seed)
    return _Denoiser(width)


def _fill(net, value):
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


def _record_path(tmp_path, n=4, interval=3):
    """Stage 1 stand-in: after step s the network's weights all equal s; nodes are due every `interval` steps."""
    path = TeacherPath(tmp_path / "path", num_nodes=n, interval=interval)
    net = _net()
    written = []
    for step in range(1, path.stage1_steps + 1):
        _fill(net, float(step))
        if path.record(step, net) is not None:
            written.append(step)
    return path, written


def test_recording_saves_n_weights_only_nodes_every_interval(tmp_path):
    path, written = _record_path(tmp_path, n=4, interval=3)
    assert written == [3, 6, 9, 12]
    assert path.complete()
    files = sorted(p.name for p in (tmp_path / "path").iterdir())
    assert files == ["manifest.json", *[f"node_{i:03d}.safetensors" for i in range(1, 5)]]
    from safetensors.torch import load_file

    state = load_file(str(path.node_file(2)))  # weights only: a flat tensor dict, no optimiser / pickled objects
    assert set(state) == set(_net().state_dict()) and all(torch.all(v == 6.0) for v in state.values())
    assert path.manifest()["node_stage1_step"] == {"1": 3, "2": 6, "3": 9, "4": 12}


def test_schedule_walks_the_path_in_reverse_and_ends_at_the_teacher():
    n, k = 5, 10
    seq = [target_node(s, n, k) for s in range(80)]
    assert seq[:10] == [4] * 10 and seq[10:20] == [3] * 10 and seq[30:40] == [1] * 10
    assert all(i == 0 for i in seq[40:])  # the teacher from (N-1)K on, for the rest of training
    changes = [s for s in range(1, 80) if seq[s] != seq[s - 1]]
    assert changes == [10, 20, 30, 40]  # a switch exactly every K iterations (modulo, not the README's '//')
    assert all(a >= b for a, b in zip(seq, seq[1:]))  # monotone toward the teacher
    assert stage2_nodes(80, n, k) == [(0, 4), (10, 3), (20, 2), (30, 1), (40, 0)]
    assert stage2_nodes(25, n, k) == [(0, 4), (10, 3), (20, 2)]  # a short run need not reach the teacher
    assert [target_node(s, 1, k) for s in (0, 5, 500)] == [0, 0, 0]  # N = 1: endpoint from the start


def _provider(path, teacher, k, loads=None):
    from common.diffusion.distill import FixedTarget

    def make():
        if loads is not None:
            loads.append(1)
        return _fill(_net(7), 123.0)  # a fresh network holding junk until the node is loaded into it

    return path.target(FixedTarget(teacher), make, switch_every=k)


def _served(provider, step):
    """(node weight value, network) the provider uses at `step`; node i's weights all equal i * interval."""
    net = provider.provider(step).net
    return next(iter(net.parameters())).flatten()[0].item(), net


def test_provider_walks_the_nodes_in_reverse_and_ends_at_the_real_teacher(tmp_path):
    path, _ = _record_path(tmp_path, n=4, interval=3)
    teacher = _fill(_net(), -1.0).requires_grad_(False)
    loads = []
    prov = _provider(path, teacher, 10, loads)
    values = []
    for step in range(0, 40):
        v, net = _served(prov, step)
        values.append(v)
        assert not any(p.requires_grad for p in net.parameters())
        assert (v == -1.0) == (path.target_index(step, 10) == 0)
        assert v == (-1.0 if path.target_index(step, 10) == 0 else 3.0 * path.target_index(step, 10))
    # node i holds the weights after i * interval stage-1 steps: 9 (node 3), 6, 3, then the teacher
    assert values[::10] == [9.0, 6.0, 3.0, -1.0]
    assert _served(prov, 39)[1] is teacher and _served(prov, 10_000)[1] is teacher
    assert len(loads) == 3  # one load per switch, not per iteration
    x = torch.randn(5, 2)
    assert torch.equal(prov(x, None, None, step=35), teacher(x))  # the call used by the distillation step


def test_resume_mid_path_serves_what_an_uninterrupted_run_serves(tmp_path):
    path, _ = _record_path(tmp_path, n=4, interval=3)
    teacher = _fill(_net(), -1.0).requires_grad_(False)
    straight = _provider(TeacherPath(tmp_path / "path", 4, 3), teacher, 7)
    ref = {}
    for s in range(0, 30):
        _, net = _served(straight, s)
        ref[s] = {k: v.clone() for k, v in net.state_dict().items()}
    for resume_at in (5, 7, 13, 20, 21):  # inside a node, on a switch, just before and after the teacher takes over
        fresh = _provider(TeacherPath(tmp_path / "path", 4, 3), teacher, 7)  # a new process: nothing loaded
        for s in range(resume_at, 30):
            _, net = _served(fresh, s)
            for k, v in net.state_dict().items():
                assert torch.equal(v, ref[s][k]), (resume_at, s, k)


def test_stage1_resumed_mid_way_completes_the_same_path(tmp_path):
    full, _ = _record_path(tmp_path / "a", n=4, interval=3)
    part = TeacherPath(tmp_path / "b" / "path", 4, 3)
    net = _net()
    for step in range(1, 8):  # killed after step 7: nodes 1, 2 written, not complete
        part.record(step, _fill(net, float(step)))
    assert not part.complete() and part.manifest()["recorded"] == [1, 2]
    again = TeacherPath(tmp_path / "b" / "path", 4, 3)
    for step in range(6, 13):  # resumed from the checkpoint at step 6 (node 2 is rewritten identically)
        again.record(step, _fill(net, float(step)))
    assert again.complete()
    from safetensors.torch import load_file

    for i in range(1, 5):
        a, b = load_file(str(full.node_file(i))), load_file(str(again.node_file(i)))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_loading_is_strict_and_strips_wrapper_prefixes(tmp_path):
    net = _fill(_net(), 2.0)
    wrapped = {f"module.{k}": v for k, v in net.state_dict().items()}
    out = load_weights_strict(_net(5), wrapped)
    assert all(torch.all(p == 2.0) for p in out.parameters())
    # the official code's failure: a whole critic dict with other prefixes -> nothing would match
    critic = {f"fake_unet.{k}": v for k, v in net.state_dict().items()}
    with pytest.raises(PathError, match="keys do not match"):
        load_weights_strict(_net(), critic)
    with pytest.raises(PathError, match="shape mismatch"):
        load_weights_strict(_net(width=4), net.state_dict())
    path = TeacherPath(tmp_path / "p", 2, 1)
    with pytest.raises(PathError, match="has not written node 1"):
        path.load_node(1, _net())


def test_a_path_of_another_shape_in_the_folder_is_refused(tmp_path):
    _record_path(tmp_path, n=4, interval=3)
    with pytest.raises(PathError, match="holds a path of 4 nodes every 3 steps"):
        TeacherPath(tmp_path / "path", 8, 3).complete()
