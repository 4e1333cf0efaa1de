"""The degradation path of DisBack (paper Alg. 1 and Fig. 3): recorded in stage 1, walked backwards in stage 2.

Node 0 is the teacher itself; nodes 1..N are weights-only checkpoints of the degrading copy s'_theta, saved every
`interval` stage-1 steps while it is fine-tuned toward the initial student G^0 (node N fits G^0 best). Stage 2
initialises the fake score from node N and uses node N-1, N-2, ..., 1 as the target score, each for
`switch_every` stage-2 iterations, then the teacher (node 0) for the rest of training.

On disk (inside the run folder): ``path/node_001.safetensors`` ... ``path/node_NNN.safetensors`` and
``path/manifest.json`` (N, interval, the stage-1 step of every node, a fingerprint of the network's keys). Node 0 is
not written: it is the teacher the run was started with, so stage 2 serves the very teacher module, not a copy.
Every file is written to a temporary name and renamed. Loading strips wrapper prefixes (``module.``,
``_orig_mod.``) and asserts that every key matched: the official code loads its nodes with ``strict=False`` into a
network whose keys carry a different prefix, so nothing is loaded and the target never changes (the defect this
module is written against).

Serving goes through the shared step-dependent provider (common.diffusion.distill.StepScheduledTarget); the
schedule is a pure function of the iteration, so a resumed run serves the same node as an uninterrupted one.
Left out: per-node budgets (all nodes get the same number of iterations, as in the official README).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from common.checkpoint import atomic_write_bytes, atomic_write_json
from common.config import UserInputError

__all__ = ["PathError", "TeacherPath", "target_node", "stage2_nodes", "clean_state_dict", "load_weights_strict"]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class PathError(UserInputError):
    """A path node is missing, incomplete, or does not match the network it is loaded into."""


def target_node(step: int, num_nodes: int, switch_every: int) -> int:
    """Index of the target node at stage-2 iteration `step` (0 = the teacher).

    Node N-1 for iterations [0, K), N-2 for [K, 2K), ..., node 1 for [(N-2)K, (N-1)K), the teacher from (N-1)K on.
    The official README's `idx // interval_2nd == 0` is meant as a modulo; a switch every K iterations is the same
    as this integer division of the iteration. N = 1 gives the teacher from the start (endpoint distillation with
    the fake score initialised from the degraded node).
    """
    if num_nodes < 1 or switch_every < 1 or step < 0:
        raise ValueError(
            f"target_node: need num_nodes >= 1, switch_every >= 1, step >= 0 (got {num_nodes}, {switch_every}, {step})"
        )
    return max(num_nodes - 1 - step // switch_every, 0)


def stage2_nodes(total_steps: int, num_nodes: int, switch_every: int) -> list[tuple[int, int]]:
    """[(first iteration, node)] for every target change within `total_steps` iterations, in order."""
    out, prev = [], None
    for node in range(num_nodes - 1, -1, -1):
        first = (num_nodes - 1 - node) * switch_every
        if first >= total_steps:
            break
        if node != prev:
            out.append((first, node))
            prev = node
    return out


def clean_state_dict(state: dict) -> dict:
    """Strip DDP / torch.compile wrapper prefixes from every key."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def load_weights_strict(net: nn.Module, state: dict, what: str = "weights") -> nn.Module:
    """Load `state` into `net`, asserting that every key matched (no silent partial load)."""
    state = clean_state_dict(state)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise PathError(
            f"{what}: keys do not match the network ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise PathError(
            f"{what}: shape mismatch for {bad[:3]} (e.g. {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})"
        )
    net.load_state_dict(state, strict=True)
    return net


def _fingerprint(net: nn.Module) -> str:
    import hashlib

    spec = [(k, list(v.shape)) for k, v in sorted(net.state_dict().items())]
    return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:12]


class TeacherPath:
    """Record (stage 1) and serve (stage 2) the degradation path stored in `directory`.

    `num_nodes` = N checkpoints besides the teacher; `interval` = stage-1 steps between two checkpoints, so stage 1
    runs N * interval steps and node i is the state after i * interval steps.
    """

    def __init__(self, directory, num_nodes: int, interval: int):
        if num_nodes < 1 or interval < 1:
            raise ValueError(f"TeacherPath: num_nodes and interval must be >= 1 (got {num_nodes}, {interval})")
        self.dir = Path(directory)
        self.num_nodes, self.interval = num_nodes, interval

    # ---------------------------------------------------------------- stage 1
    @property
    def stage1_steps(self) -> int:
        return self.num_nodes * self.interval

    def node_file(self, i: int) -> Path:
        if not 1 <= i <= self.num_nodes:
            raise PathError(f"node {i} is outside 1..{self.num_nodes} (node 0 is the teacher and is not stored)")
        return self.dir / f"node_{i:03d}.safetensors"

    def due(self, step: int) -> int | None:
        """The node to record after `step` stage-1 updates (1-based count), or None between two nodes."""
        if step > 0 and step % self.interval == 0 and step // self.interval <= self.num_nodes:
            return step // self.interval
        return None

    def record(self, step: int, net: nn.Module) -> Path | None:
        """After `step` stage-1 updates, save the network's weights (only) when a node is due."""
        i = self.due(step)
        if i is None:
            return None
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in clean_state_dict(net.state_dict()).items()}
        path = atomic_write_bytes(save(state), self.node_file(i))
        self._write_manifest(net)
        return path

    def _write_manifest(self, net: nn.Module) -> None:
        recorded = [i for i in range(1, self.num_nodes + 1) if self.node_file(i).is_file()]
        atomic_write_json(
            {
                "num_nodes": self.num_nodes,
                "interval": self.interval,
                "node_stage1_step": {str(i): i * self.interval for i in recorded},
                "recorded": recorded,
                "complete": recorded == list(range(1, self.num_nodes + 1)),
                "network_fingerprint": _fingerprint(net),
                "node_0": "the teacher (not stored)",
            },
            self.dir / "manifest.json",
        )

    def manifest(self) -> dict | None:
        p = self.dir / "manifest.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def complete(self) -> bool:
        m = self.manifest()
        if m is None:
            return False
        if (m["num_nodes"], m["interval"]) != (self.num_nodes, self.interval):
            raise PathError(
                f"{self.dir} holds a path of {m['num_nodes']} nodes every {m['interval']} steps, but the config asks "
                f"for {self.num_nodes} every {self.interval}; use another run folder (--set run_name=...)"
            )
        return bool(m["complete"]) and all(self.node_file(i).is_file() for i in range(1, self.num_nodes + 1))

    # ---------------------------------------------------------------- stage 2
    def load_node(self, i: int, net: nn.Module) -> nn.Module:
        """Load node i (1..N) into `net` (weights only, every key must match)."""
        from safetensors.torch import load_file

        f = self.node_file(i)
        if not f.is_file():
            raise PathError(f"{f} does not exist: stage 1 (degradation recording) has not written node {i} yet")
        return load_weights_strict(net, load_file(str(f)), what=str(f))

    def target_index(self, step: int, switch_every: int) -> int:
        return target_node(step, self.num_nodes, switch_every)

    def loader(self, i: int, make_net, view=None):
        """A zero-argument loader of node i into a fresh network from `make_net()` (frozen, eval mode); `view`
        picks the module to serve (e.g. the unwrapped network when CFG is applied to the node)."""

        def load():
            net = self.load_node(i, make_net()).requires_grad_(False).eval()
            return view(net) if view is not None else net

        load.node = i
        return load

    def target(self, final, make_net, switch_every: int, guidance: float | None = None, view=None):
        """The stage-2 target-score provider: nodes N-1, ..., 1 for `switch_every` iterations each, then `final`
        (the teacher's provider) for good. Built on the shared step-dependent provider, which loads a node only
        when its turn comes and holds at most one intermediate node in memory; `guidance` is the CFG scale of the
        intermediate nodes (None: conditional only)."""
        from common.diffusion.distill import StepScheduledTarget

        nodes = [self.loader(i, make_net, view) for i in range(self.num_nodes - 1, 0, -1)]
        return StepScheduledTarget(nodes, every=switch_every, final=final, guidance=guidance)
