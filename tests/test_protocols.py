"""Full-scale evaluation protocols (common/metrics/protocols.py) with a tiny feature network and a tiny CLIP."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from common.metrics.protocols import (
    FeatureMoments,
    ProtocolError,
    class_conditional_fid,
    coco_pairs,
    coco_zero_shot,
    fid_from_moments,
)


class TinyFeatures(nn.Module):
    num_features = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x.float())).mean((2, 3)) + x.float().mean((1, 2, 3))[:, None]


def _real_batches(n=96, bs=32, shift=0.0, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.tanh(torch.randn(min(bs, n - i), 3, 8, 8, generator=g) * 0.5 + shift) for i in range(0, n, bs)]


def _gen(shift=0.0, calls=None, fail_at=None):
    def generate(z, labels):
        if calls is not None:
            calls.append(len(z))
            if fail_at is not None and len(calls) == fail_at:
                raise KeyboardInterrupt
        return torch.tanh(z * 0.5 + shift + 0.0 * labels[:, None, None, None])

    return generate


def test_moments_match_torch_cov_and_torchmetrics_fid():
    from torchmetrics.image.fid import FrechetInceptionDistance

    feat = TinyFeatures().eval()
    a, b = torch.cat(_real_batches()), torch.cat(_real_batches(shift=0.3, seed=9))
    m = FeatureMoments(8)
    with torch.no_grad():
        fa, fb = feat(a).double(), feat(b).double()
    for chunk in fa.split(20):
        m.update(chunk)
    mu, cov = m.mean_cov()
    torch.testing.assert_close(mu, fa.mean(0))
    torch.testing.assert_close(cov, torch.cov(fa.T))
    mb = FeatureMoments(8)
    mb.update(fb)
    ref = FrechetInceptionDistance(feature=feat, input_img_size=(3, 8, 8))
    ref.update(a, real=True)
    ref.update(b, real=False)
    assert fid_from_moments(mb, m) == pytest.approx(float(ref.compute()), rel=1e-4, abs=1e-8)


def test_class_conditional_fid_streams_resumes_and_separates(tmp_path):
    feat = TinyFeatures()
    kw = dict(num_samples=100, batch_size=32, num_classes=10, noise_shape=(3, 8, 8), progress=False)
    same = class_conditional_fid(_gen(), feat, reference=_real_batches(), **kw)
    shifted = class_conditional_fid(_gen(shift=0.5), feat, reference=_real_batches(), **kw)
    assert same["num_samples"] == 100  # 4 batches, the last one partial
    assert same["FID"] < 0.2 * shifted["FID"]

    calls = []
    state = tmp_path / "fid_state.pt"
    with pytest.raises(KeyboardInterrupt):
        class_conditional_fid(
            _gen(calls=calls, fail_at=3), feat, reference=_real_batches(), state_path=state, save_every=1, **kw
        )
    assert calls == [32, 32, 32]
    resumed_calls = []
    resumed = class_conditional_fid(
        _gen(calls=resumed_calls), feat, reference=_real_batches(), state_path=state, save_every=1, **kw
    )
    assert resumed_calls == [32, 4]  # batches 0-1 came from the state file
    assert resumed["FID"] == pytest.approx(same["FID"], rel=1e-9, abs=1e-12)

    with pytest.raises(ProtocolError, match="other arguments"):
        class_conditional_fid(_gen(), feat, reference=_real_batches(), state_path=state, seed=1, **kw)


def test_class_conditional_fid_with_reference_statistics(tmp_path):
    import numpy as np

    feat = TinyFeatures()
    m = FeatureMoments(8)
    with torch.no_grad():
        for x in _real_batches():
            m.update(feat(x))
    mu, sigma = m.mean_cov()
    np.savez(tmp_path / "ref.npz", mu=mu.numpy(), sigma=sigma.numpy())
    kw = dict(num_samples=64, batch_size=32, num_classes=10, noise_shape=(3, 8, 8), progress=False)
    a = class_conditional_fid(_gen(), feat, reference=tmp_path / "ref.npz", **kw)
    b = class_conditional_fid(_gen(), feat, reference=_real_batches(), **kw)
    assert a["FID"] == pytest.approx(b["FID"], rel=1e-6)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ProtocolError, match="3 dims"):
        class_conditional_fid(_gen(), feat, reference=tmp_path / "bad.npz", **kw)
    with pytest.raises(ProtocolError, match="not found"):
        class_conditional_fid(_gen(), feat, reference=tmp_path / "missing.npz", **kw)


# ------------------------------------------------------------------ COCO


def _coco_table(tmp_path, n_images=12):
    import datasets
    import numpy as np
    from PIL import Image

    rows = {"image_id": [], "caption": [], "image": []}
    rng = np.random.default_rng(0)
    for i in range(n_images):
        im = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        for j in range(2):  # two captions per image, as in COCO
            rows["image_id"].append(i)
            rows["caption"].append(f"a photo number {i} variant {j}")
            rows["image"].append(im)
    feats = datasets.Features(
        {"image_id": datasets.Value("int64"), "caption": datasets.Value("string"), "image": datasets.Image()}
    )
    ds = datasets.Dataset.from_dict(rows, features=feats)
    path = tmp_path / "coco"
    ds.save_to_disk(str(path))
    return path


def test_coco_pairs_one_caption_per_image_seeded(tmp_path):
    path = _coco_table(tmp_path)
    a = coco_pairs(path, 8, id_column="image_id", seed=3)
    b = coco_pairs(path, 8, id_column="image_id", seed=3)
    c = coco_pairs(path, 8, id_column="image_id", seed=4)
    assert a["caption"] == b["caption"] and a["caption"] != c["caption"]
    assert len(set(a["image_id"])) == 8
    with pytest.raises(ProtocolError, match="12"):
        coco_pairs(path, 13, id_column="image_id")
    with pytest.raises(ProtocolError, match="column 'text'"):
        coco_pairs(path, 2, caption_column="text")


def _tiny_clip(tmp_path):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    d = tmp_path / "clip"
    d.mkdir()
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=len(vocab) - 2,
            eos_token_id=len(vocab) - 1,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    model = CLIPModel(cfg)
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d, model, proc


def test_coco_zero_shot_fid_clip_and_resume(tmp_path):
    path = _coco_table(tmp_path)
    pairs = coco_pairs(path, 10, id_column="image_id", seed=0)
    clip_dir, model, proc = _tiny_clip(tmp_path)
    feat = TinyFeatures()
    calls = []

    def generate(caps, g):
        calls.append(len(caps))
        if len(calls) == 3 and fail[0]:
            raise KeyboardInterrupt
        return torch.rand(len(caps), 3, 16, 16, generator=g) * 2 - 1

    kw = dict(resolution=16, batch_size=4, clip_model=clip_dir, progress=False, save_every=1)
    fail = [False]
    full = coco_zero_shot(generate, feat, pairs, **kw)
    assert full["num_samples"] == 10 and calls == [4, 4, 2]
    assert 0 <= full["CLIP score"] <= 100

    # the CLIP score is max(mean over pairs of 100 * cos(image, text), 0) with the supplied model
    scores = []
    for i in range(3):
        rows = pairs[i * 4 : min(10, (i + 1) * 4)]
        g = torch.Generator().manual_seed(i)
        x = torch.rand(len(rows["caption"]), 3, 16, 16, generator=g) * 2 - 1
        u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        inp = proc(text=rows["caption"], images=list(u8), return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model(**inp)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)
        scores += (100 * cos).tolist()
    assert full["CLIP score"] == pytest.approx(max(sum(scores) / len(scores), 0.0), rel=1e-4, abs=1e-6)

    calls.clear()
    fail[0] = True
    state = tmp_path / "coco_state.pt"
    with pytest.raises(KeyboardInterrupt):
        coco_zero_shot(generate, feat, pairs, state_path=state, **kw)
    fail[0] = False
    calls.clear()
    resumed = coco_zero_shot(generate, feat, pairs, state_path=state, **kw)
    assert calls == [2]
    assert resumed["FID"] == pytest.approx(full["FID"], rel=1e-9)
    assert resumed["CLIP score"] == pytest.approx(full["CLIP score"], rel=1e-9)


def test_coco_zero_shot_errors(tmp_path):
    path = _coco_table(tmp_path)
    pairs = coco_pairs(path, 4, id_column="image_id")
    with pytest.raises(ProtocolError, match="CLIP model"):
        coco_zero_shot(lambda c, g: torch.zeros(len(c), 3, 8, 8), TinyFeatures(), pairs, clip_model=tmp_path / "x")
    with pytest.raises(ProtocolError, match="could not be loaded"):
        coco_pairs(tmp_path / "no-such-dataset", 2)
