"""Embedded compositional image-caption benchmark: two rendered shapes, their attributes and their relation.

A *scene* is (object A, relation, object B) with an object = (size, colour, shape) and relation in {left of, above}
after normalisation ("right of" / "below" are the converse with A and B swapped). Images are 32x32 RGB renders
(numpy only) with position jitter and pixel noise; each scene has five caption paraphrases, so image->text retrieval
follows the COCO convention (a hit if any of the image's captions is retrieved).

Split by construction: every scene is assigned to train / val / test by a hash of its canonical key, so a test scene
(its image and all its captions) can never be emitted by the training stream, whatever seed or sampler is used.
Distractor captions (one attribute or the relation changed) used in training are filtered to training scenes too.

Left out: more than two objects, occlusion, and free-form language.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
RGB = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.9, 0.1),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.95, 0.1),
    "magenta": (1.0, 0.1, 1.0),
    "cyan": (0.1, 0.95, 1.0),
}
RELATIONS = ("left of", "above")  # canonical; the converses are "right of" and "below"
CONVERSE = {"left of": "right of", "above": "below"}
VOCAB = sorted({"a", "the", "there", "is", "and", "of", "left", "right", "above", "below", *SHAPES, *COLOURS, *SIZES})

Obj = tuple[str, str, str]  # (size, colour, shape)
Scene = tuple[Obj, str, Obj]  # (A, canonical relation, B)


def all_objects() -> list[Obj]:
    return list(itertools.product(SIZES, COLOURS, SHAPES))


def all_scenes() -> list[Scene]:
    objs = all_objects()
    return [(a, r, b) for a in objs for b in objs if a != b for r in RELATIONS]


def scene_key(s: Scene) -> str:
    a, r, b = s
    return f"{' '.join(a)}|{r}|{' '.join(b)}"


def split_of(s: Scene, test_fraction: float, val_fraction: float, salt: str = "cprd-shapes") -> str:
    """'test', 'val' or 'train' from a hash of the scene key (fixed: independent of every seed)."""
    h = int(hashlib.sha256(f"{salt}:{scene_key(s)}".encode()).hexdigest()[:12], 16) / 16**12
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def obj_text(o: Obj) -> str:
    return " ".join(o)


def captions(s: Scene) -> list[str]:
    """Five paraphrases of one scene (both relation directions, three sentence frames)."""
    a, r, b = s
    A, B, c = obj_text(a), obj_text(b), CONVERSE[r]
    return [
        f"a {A} {r} a {B}",
        f"a {B} {c} a {A}",
        f"there is a {A} {r} a {B}",
        f"the {A} is {r} the {B}",
        f"the {B} is {c} the {A}",
    ]


def canonical(a: Obj, rel: str, b: Obj) -> Scene:
    """Any of the four relation words -> the canonical scene."""
    if rel in RELATIONS:
        return (a, rel, b)
    inv = {v: k for k, v in CONVERSE.items()}[rel]
    return (b, inv, a)


def perturbations(s: Scene) -> list[tuple[str, Scene]]:
    """Scenes that differ from s in one attribute of one object, in the binding, or in the relation."""
    a, r, b = s
    out: list[tuple[str, Scene]] = []

    def add(kind, a2, r2, b2):
        if a2 != b2:
            t = canonical(a2, r2, b2)
            if t != s:
                out.append((kind, t))

    add("flip_relation", a, CONVERSE[r], b)  # "A right of B" = B left of A
    add("swap_colours", (a[0], b[1], a[2]), r, (b[0], a[1], b[2]))
    add("swap_shapes", (a[0], a[1], b[2]), r, (b[0], b[1], a[2]))
    add("swap_sizes", (b[0], a[1], a[2]), r, (a[0], b[1], b[2]))
    add("change_axis", a, "above" if r == "left of" else "left of", b)
    for i, o in ((0, a), (1, b)):
        for j, values in ((0, SIZES), (1, COLOURS), (2, SHAPES)):
            for v in values:
                if v != o[j]:
                    o2 = tuple(v if k == j else o[k] for k in range(3))
                    add(f"change_{('size', 'colour', 'shape')[j]}", o2 if i == 0 else a, r, o2 if i == 1 else b)
    seen, uniq = set(), []
    for kind, t in out:
        if t not in seen:
            seen.add(t)
            uniq.append((kind, t))
    return uniq


def matching_attributes(s: Scene, t: Scene) -> int:
    """Graded similarity 0..7: equal (size, colour, shape) of A and of B, plus the relation (CxC analogue)."""
    (a, r, b), (a2, r2, b2) = s, t
    return sum(x == y for x, y in zip(a, a2)) + sum(x == y for x, y in zip(b, b2)) + (r == r2)


# --- rendering -----------------------------------------------------------------------------------------------

_HALF = {"small": 3, "large": 6}  # half-extent in pixels


def _mask(shape: str, h: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    if shape == "square":
        m = np.ones_like(yy, dtype=bool)
    elif shape == "circle":
        m = xx**2 + yy**2 <= h * h + h
    elif shape == "triangle":  # apex up
        m = (yy + h) * 1.0 >= 2.0 * np.abs(xx)
    elif shape == "cross":
        w = max(1, h // 3)
        m = (np.abs(xx) <= w) | (np.abs(yy) <= w)
    else:
        raise ValueError(shape)
    return m


def render(s: Scene, rng: np.random.Generator, size: int = 32, noise: float = 0.05, jitter: int = 2) -> np.ndarray:
    """(3, size, size) float32 image in [0, 1]: A left of / above B, positions jittered, Gaussian pixel noise."""
    img = np.zeros((3, size, size), dtype=np.float32)
    a, r, b = s
    q = size // 4
    if r == "left of":
        centres = [(size // 2, q), (size // 2, 3 * q)]
    else:
        centres = [(q, size // 2), (3 * q, size // 2)]
    for (cy, cx), o in zip(centres, (a, b), strict=True):
        h = _HALF[o[0]]
        cy += int(rng.integers(-jitter, jitter + 1))
        cx += int(rng.integers(-jitter, jitter + 1))
        if r == "left of":
            cy += int(rng.integers(-4, 5))
        else:
            cx += int(rng.integers(-4, 5))
        m = _mask(o[2], h)
        y0, x0 = cy - h, cx - h
        ys, xs = np.nonzero(m)
        ys, xs = ys + y0, xs + x0
        ok = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        img[:, ys[ok], xs[ok]] = np.asarray(RGB[o[1]], dtype=np.float32)[:, None]
    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


# --- the benchmark -------------------------------------------------------------------------------------------


@dataclass
class ShapesData:
    """Train batches are fixed (data_seed): every (image, caption) pair the student can mine has a cached teacher
    score. ``*_scene`` hold indices into ``scenes``."""

    scenes: list[Scene]
    split: list[str]
    train_images: np.ndarray  # (Ntr, 3, 32, 32)
    train_captions: list[str]  # one caption per training image (a random paraphrase)
    train_scene: np.ndarray  # (Ntr,)
    test_images: np.ndarray  # (Nte, 3, 32, 32): one image per test scene
    test_captions: list[str]  # 5 per image, image i owns captions 5i..5i+4
    test_scene: np.ndarray  # (Nte,)
    val_images: np.ndarray
    val_captions: list[str]
    val_scene: np.ndarray
    scenes_index: dict

    @property
    def caption_image(self) -> np.ndarray:
        """Index of the test image that each test caption describes."""
        return np.repeat(np.arange(len(self.test_images)), 5)


def build(
    data_seed: int = 0,
    n_train: int = 4096,
    test_fraction: float = 0.3,
    val_fraction: float = 0.05,
    noise: float = 0.05,
    max_test: int = 0,
    max_val: int = 256,
) -> ShapesData:
    scenes = all_scenes()
    split = [split_of(s, test_fraction, val_fraction) for s in scenes]
    rng = np.random.default_rng(data_seed)
    tr = np.array([i for i, p in enumerate(split) if p == "train"])
    te = np.array([i for i, p in enumerate(split) if p == "test"])
    va = np.array([i for i, p in enumerate(split) if p == "val"])
    # training stream: scenes drawn from the train split only (the reservation is by construction)
    train_scene = rng.choice(tr, size=n_train, replace=n_train > len(tr))
    train_images = np.stack([render(scenes[i], rng, noise=noise) for i in train_scene])
    train_captions = [captions(scenes[i])[int(rng.integers(5))] for i in train_scene]
    test_rng = np.random.default_rng(10_000 + data_seed)
    if max_test:
        te = test_rng.permutation(te)[:max_test]
    test_images = np.stack([render(scenes[i], test_rng, noise=noise) for i in te])
    test_captions = [c for i in te for c in captions(scenes[i])]
    va = test_rng.permutation(va)[:max_val] if max_val else va
    val_images = np.stack([render(scenes[i], test_rng, noise=noise) for i in va])
    val_captions = [captions(scenes[i])[int(test_rng.integers(5))] for i in va]
    return ShapesData(
        scenes, split, train_images, train_captions, train_scene, test_images, test_captions, te,
        val_images, val_captions, va, {s: i for i, s in enumerate(scenes)},
    )  # fmt: skip


def fixed_batches(scene_ids: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """Partition training items into fixed batches of ``batch`` items with distinct scenes in each batch (so the
    only in-batch positive of an image is its own caption). Returns (n_batches, batch) item indices."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scene_ids))
    batches, current, used = [], [], set()
    for i in order:  # an item whose scene is already in the open batch is dropped from this partition
        if scene_ids[i] in used:
            continue
        current.append(i)
        used.add(scene_ids[i])
        if len(current) == batch:
            batches.append(current)
            current, used = [], set()
    return np.asarray(batches, dtype=np.int64).reshape(-1, batch)


def distractor_captions(data: ShapesData, item: int, rng: np.random.Generator, n: int) -> list[str]:
    """n captions of *training* scenes that differ from the item's scene in one attribute / binding / relation."""
    s = data.scenes[data.train_scene[item]]
    pool = [t for _, t in perturbations(s) if data.split[data.scenes_index[t]] == "train"]
    if not pool:
        return []
    pick = rng.choice(len(pool), size=n, replace=len(pool) < n)
    return [captions(pool[int(j)])[int(rng.integers(5))] for j in pick]
