"""The diffusion papers' full-scale evaluation protocols, streamed, resumable and with a progress bar.

1. Class-conditional FID over 50K samples (EDM protocol; DMD2 Table 1, f-distill, TDM): one random class label
   per sample, batch i drawn from a generator seeded by (seed, i), Fréchet distance of 2048-d Inception pool
   features against reference statistics (`mu`, `sigma` in an .npz, e.g. EDM's `fid-refs/imagenet-64x64.npz`)
   or against a stream of real images.
2. Zero-shot text-to-image on COCO (DMD2 Tables 2 / 5): N caption-image pairs of COCO-2014 val (10K for the SDXL
   rows, 30K for SD1.5), loaded through `datasets`; FID of the student's images against the matching real
   images, and the CLIP score (torchmetrics' `CLIPScore`: max(mean 100 x cosine, 0)) with a CLIP model the user supplies.

Streaming: only the feature moments (sum, sum of outer products, count; float64) and the CLIP score sum are kept,
never the images, so memory is bounded by one batch. Every `save_every` batches the state goes to `state_path`
(atomic write) and a re-run with the same arguments continues from the last saved batch; the batches are
deterministic functions of their index, so a resumed evaluation equals an uninterrupted one.
Feature networks are parameters: `common.metrics.fid.inception_feature_net(weights_dir)` (clean-fid's TorchScript
Inception, supplied by the user) for FID; tests use a tiny network. The Fréchet distance of the moments is the
torchmetrics formula (tested against `torchmetrics.image.fid.FrechetInceptionDistance`).
Left out: patch FID, HPS / ImageReward, precision / recall at full scale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import atomic_torch_save
from common.metrics.fid import frechet_distance_gaussians

__all__ = [
    "FeatureMoments",
    "load_reference_stats",
    "class_conditional_fid",
    "coco_pairs",
    "coco_zero_shot",
    "ProtocolError",
]


class ProtocolError(RuntimeError):
    """Bad input to an evaluation protocol (missing weights / data, mismatched resume state)."""


class FeatureMoments:
    """Running first and second moments of features in float64 (what FID needs, in O(d^2) memory)."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, f: torch.Tensor) -> None:
        f = f.detach().double().cpu().flatten(1)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n < 2:
            raise ProtocolError(f"need at least 2 feature vectors, have {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, cov

    def state_dict(self) -> dict:
        return {"n": self.n, "sum": self.sum, "outer": self.outer}

    def load_state_dict(self, s: dict) -> None:
        self.n, self.sum, self.outer = int(s["n"]), s["sum"].double(), s["outer"].double()


def fid_from_moments(fake: FeatureMoments, ref: FeatureMoments | tuple) -> float:
    mu1, s1 = fake.mean_cov()
    mu2, s2 = ref.mean_cov() if isinstance(ref, FeatureMoments) else ref
    return frechet_distance_gaussians(mu1, s1, mu2, s2)


def load_reference_stats(path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) from an .npz with keys `mu` and `sigma` (EDM / clean-fid reference statistics)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise ProtocolError(
            f"reference statistics {path} not found; EDM's are at "
            "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/ (e.g. imagenet-64x64.npz), or pass real images instead"
        )
    with np.load(path) as d:
        if "mu" not in d or "sigma" not in d:
            raise ProtocolError(f"{path} has keys {sorted(d.keys())}; expected 'mu' and 'sigma'")
        return torch.from_numpy(d["mu"]).double(), torch.from_numpy(d["sigma"]).double()


class _Resumable:
    """State file of one evaluation: refuses to resume a run made with different arguments."""

    def __init__(self, path, spec: dict):
        self.path = Path(path) if path else None
        self.key = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
        self.spec = spec

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        s = torch.load(self.path, map_location="cpu", weights_only=False)
        if s.get("key") != self.key:
            raise ProtocolError(
                f"{self.path} belongs to an evaluation with other arguments ({s.get('spec')}); "
                "delete it or pass another state_path"
            )
        return s

    def save(self, payload: dict) -> None:
        if self.path is not None:
            atomic_torch_save({"key": self.key, "spec": self.spec, **payload}, self.path)


def _progress(total, initial, desc, enabled=True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled)


def _num_features(net) -> int:
    if not hasattr(net, "num_features"):
        raise ProtocolError(f"feature network {type(net).__name__} needs a num_features attribute (its output size)")
    return int(net.num_features)


@torch.no_grad()
def _features(feature_net: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    return feature_net(images.to(device)).double().cpu()


@torch.no_grad()
def class_conditional_fid(
    generate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    feature_net: nn.Module,
    *,
    num_samples: int = 50_000,
    batch_size: int = 250,
    num_classes: int = 1000,
    noise_shape: tuple = (3, 64, 64),
    reference: str | Path | Iterable[torch.Tensor] | None = None,
    seed: int = 0,
    state_path=None,
    save_every: int = 20,
    device="cpu",
    progress: bool = True,
) -> dict:
    """FID of `generate(z, labels) -> images in [-1, 1]` over `num_samples` samples with random class labels.

    `reference`: an .npz of reference statistics (mu, sigma) or an iterable of real image batches in [-1, 1]
    (streamed through the same feature network). Returns {"FID", "num_samples", "protocol"}.
    """
    if num_samples < 2 or batch_size < 1:
        raise ProtocolError(f"num_samples={num_samples}, batch_size={batch_size}: need >= 2 samples, batch >= 1")
    if reference is None:
        raise ProtocolError("reference: pass reference statistics (.npz with mu, sigma) or real image batches")
    feature_net = feature_net.to(device).eval()
    dim = _num_features(feature_net)
    n_batches = -(-num_samples // batch_size)
    spec = {
        "protocol": "class-conditional FID",
        "num_samples": num_samples,
        "batch_size": batch_size,
        "num_classes": num_classes,
        "noise_shape": list(noise_shape),
        "seed": seed,
        "reference": str(reference) if isinstance(reference, str | Path) else "stream",
    }
    st = _Resumable(state_path, spec)
    fake, real = FeatureMoments(dim), FeatureMoments(dim)
    saved = st.load()
    done = 0
    if saved:
        fake.load_state_dict(saved["fake"])
        real.load_state_dict(saved["real"])
        done = saved["batches_done"]
    if isinstance(reference, str | Path):
        ref = load_reference_stats(reference)
        if ref[0].numel() != dim:
            raise ProtocolError(f"reference statistics have {ref[0].numel()} dims, the feature net {dim}")
    else:
        if not saved or not saved.get("real_done"):
            real = FeatureMoments(dim)
            for x in reference:
                real.update(_features(feature_net, x, device))
            st.save({"fake": fake.state_dict(), "real": real.state_dict(), "real_done": True, "batches_done": done})
        ref = real
    bar = _progress(num_samples, min(done * batch_size, num_samples), "class-cond FID", progress)
    for i in range(done, n_batches):
        m = min(batch_size, num_samples - i * batch_size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)  # batch i is a function of (seed, i): resumable
        z = torch.randn((m, *noise_shape), generator=g)
        labels = torch.randint(num_classes, (m,), generator=g)
        x = generate(z.to(device), labels.to(device))
        fake.update(_features(feature_net, x.float().clamp(-1, 1), device))
        bar.update(m)
        if (i + 1) % save_every == 0 or i + 1 == n_batches:
            st.save({"fake": fake.state_dict(), "real": real.state_dict(), "real_done": True, "batches_done": i + 1})
    bar.close()
    return {"FID": fid_from_moments(fake, ref), "num_samples": fake.n, "protocol": spec}


# ------------------------------------------------------------------ zero-shot COCO


def _load_table(source, split):
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    p = Path(str(source))
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
        return datasets.load_from_disk(str(p))
    try:
        return datasets.load_dataset(str(source), split=split)
    except Exception as e:  # offline / unknown id: one line that names it
        raise ProtocolError(
            f"COCO captions {source!r} (split {split!r}) could not be loaded through `datasets`: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def coco_pairs(
    source,
    num: int,
    *,
    split: str = "validation",
    caption_column: str = "caption",
    image_column: str = "image",
    id_column: str | None = None,
    seed: int = 0,
):
    """`num` (caption, image) rows of a COCO captions table, one caption per distinct image, chosen by a seeded
    permutation (the same `seed` gives the same prompts). `source`: a `datasets` id, a saved dataset folder, or a
    `datasets.Dataset`. Returns the selected `datasets.Dataset` (images stay lazy)."""
    ds = _load_table(source, split)
    for col in (caption_column, image_column):
        if col not in ds.column_names:
            raise ProtocolError(f"column {col!r} not in the COCO table (columns: {ds.column_names})")
    if id_column:  # one caption per image: keep the first row of each image id
        seen, keep = set(), []
        for i, v in enumerate(ds[id_column]):
            if v not in seen:
                seen.add(v)
                keep.append(i)
        ds = ds.select(keep)
    if num > len(ds):
        raise ProtocolError(f"asked for {num} caption-image pairs, the table has {len(ds)}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:num]
    return ds.select(sorted(perm.tolist()))


def _to_tensor_images(images, resolution: int) -> torch.Tensor:
    """PIL images (or HWC uint8 arrays) -> centre-cropped, resized [-1, 1] NCHW floats."""
    import numpy as np
    from PIL import Image

    out = []
    for im in images:
        im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 127.5 - 1


class _ClipEmbeddings(nn.Module):
    """transformers 5's CLIPModel.get_*_features return a ModelOutput whose `pooler_output` is the projected
    embedding; torchmetrics 1.9's CLIPScore expects the tensor itself. This adapter hands it the tensor."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *a, **k):
        out = self.model.get_image_features(*a, **k)
        return out if torch.is_tensor(out) else out.pooler_output

    def get_text_features(self, *a, **k):
        out = self.model.get_text_features(*a, **k)
        return out if torch.is_tensor(out) else out.pooler_output


def _clip_metric(clip_model):
    from torchmetrics.multimodal.clip_score import CLIPScore

    if clip_model is None:
        return None
    if isinstance(clip_model, str | Path):
        p = Path(clip_model)
        if not p.exists():
            raise ProtocolError(
                f"CLIP model {p} not found; pass a local transformers CLIP folder (the papers use OpenCLIP "
                "ViT-G/14 for SDXL and ViT-L/14 elsewhere)"
            )

        def load():
            from transformers import CLIPModel, CLIPProcessor

            return _ClipEmbeddings(CLIPModel.from_pretrained(str(p)).eval()), CLIPProcessor.from_pretrained(str(p))

        return CLIPScore(model_name_or_path=load)  # a local folder: torchmetrics takes a loader callable
    return clip_model  # an already built CLIPScore-like metric


@torch.no_grad()
def coco_zero_shot(
    generate: Callable[[list[str], torch.Generator], torch.Tensor],
    feature_net: nn.Module,
    pairs,
    *,
    resolution: int = 512,
    batch_size: int = 16,
    clip_model=None,
    seed: int = 0,
    state_path=None,
    save_every: int = 10,
    device="cpu",
    progress: bool = True,
    image_column: str = "image",
    caption_column: str = "caption",
) -> dict:
    """FID of `generate(captions, generator) -> images in [-1, 1]` against the pairs' own real images, plus the
    CLIP score of the generated images against their captions (when `clip_model` is given).

    `pairs` comes from :func:`coco_pairs`; both image sets are centre-cropped / resized to `resolution`.
    """
    feature_net = feature_net.to(device).eval()
    dim = _num_features(feature_net)
    n = len(pairs)
    n_batches = -(-n // batch_size)
    spec = {
        "protocol": "zero-shot COCO",
        "num_pairs": n,
        "resolution": resolution,
        "batch_size": batch_size,
        "seed": seed,
        "pairs_fingerprint": getattr(pairs, "_fingerprint", None),
        "clip": str(clip_model) if clip_model is not None else None,
    }
    st = _Resumable(state_path, spec)
    fake, real = FeatureMoments(dim), FeatureMoments(dim)
    clip_sum, clip_n, done = 0.0, 0, 0
    saved = st.load()
    if saved:
        fake.load_state_dict(saved["fake"])
        real.load_state_dict(saved["real"])
        clip_sum, clip_n, done = saved["clip_sum"], saved["clip_n"], saved["batches_done"]
    clip = _clip_metric(clip_model)
    bar = _progress(n, min(done * batch_size, n), "COCO zero-shot", progress)
    for i in range(done, n_batches):
        rows = pairs[i * batch_size : min(n, (i + 1) * batch_size)]
        caps = [str(c) for c in rows[caption_column]]
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        x = generate(caps, g).float().clamp(-1, 1).cpu()
        if x.shape[-1] != resolution:
            x = nn.functional.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True)
        fake.update(_features(feature_net, x.clamp(-1, 1), device))
        real.update(_features(feature_net, _to_tensor_images(rows[image_column], resolution), device))
        if clip is not None:
            clip.reset()
            u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            clip.update(list(u8), caps)
            clip_sum += float(clip.score)  # torchmetrics keeps the sum of 100 * cos(image, text) ...
            clip_n += int(clip.n_samples)  # ... and the count; its score is max(mean, 0)
        bar.update(len(caps))
        if (i + 1) % save_every == 0 or i + 1 == n_batches:
            st.save(
                {
                    "fake": fake.state_dict(),
                    "real": real.state_dict(),
                    "clip_sum": clip_sum,
                    "clip_n": clip_n,
                    "batches_done": i + 1,
                }
            )
    bar.close()
    out = {"FID": fid_from_moments(fake, real), "num_samples": fake.n, "protocol": spec}
    if clip is not None:
        out["CLIP score"] = max(clip_sum / max(clip_n, 1), 0.0)
    return out
