"""Karpathy-split image-caption annotations (COCO, Flickr30K) as used by BLIP / LAVIS.

Two layouts are read:
* BLIP/LAVIS files ``coco_karpathy_{train,val,test}.json``: train = a list of ``{"image", "caption", "image_id"}``
  (one caption per entry); val/test = a list of ``{"image", "caption": [5 captions]}``;
* Karpathy's original ``dataset_coco.json`` / ``dataset_flickr30k.json``: ``{"images": [{"filepath", "filename",
  "split", "sentences": [{"raw"}...]}]}`` (``restval`` counts as train).

Both give ``KarpathyImage`` entries (one per image, all its captions) for one split. Hub datasets with the same
information (``nlphuji/flickr30k``, ``yerevann/coco-karpathy``) are converted by :func:`from_hf_rows`.
Loaders check the structure and fail with a message that names the file and the problem.

Left out: downloading the annotation files or images (full-scale runs only; see the paper README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class KarpathyFormatError(ValueError):
    pass


@dataclass
class KarpathyImage:
    image: str  # path relative to the image root, or an in-memory handle (hub rows)
    captions: list[str] = field(default_factory=list)
    image_id: str = ""


def load_karpathy_json(path: str | Path, split: str) -> list[KarpathyImage]:
    """Images of ``split`` ('train', 'val', 'test') from a BLIP-style split file or a Karpathy dataset file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Karpathy annotation file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KarpathyFormatError(f"{path}: not JSON ({e})") from None
    if isinstance(data, dict) and "images" in data:
        return _from_karpathy(data["images"], split, path)
    if isinstance(data, list):
        return _from_blip(data, path)
    raise KarpathyFormatError(f"{path}: expected a list of entries or a dict with 'images'")


def _from_karpathy(images: list, split: str, path: Path) -> list[KarpathyImage]:
    want = {"train": ("train", "restval")}.get(split, (split,))
    out = []
    for n, im in enumerate(images):
        try:
            if im["split"] not in want:
                continue
            rel = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
            caps = [s["raw"].strip() for s in im["sentences"]]
        except (KeyError, TypeError) as e:
            raise KarpathyFormatError(f"{path}: image entry {n} misses {e}") from None
        out.append(KarpathyImage(rel, caps, str(im.get("cocoid", im.get("imgid", n)))))
    return out


def _from_blip(entries: list, path: Path) -> list[KarpathyImage]:
    by_image: dict[str, KarpathyImage] = {}
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or "image" not in e or "caption" not in e:
            raise KarpathyFormatError(f"{path}: entry {n} needs 'image' and 'caption'")
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        if not all(isinstance(c, str) for c in caps):
            raise KarpathyFormatError(f"{path}: entry {n} has a non-string caption")
        item = by_image.setdefault(e["image"], KarpathyImage(e["image"], [], str(e.get("image_id", e["image"]))))
        item.captions.extend(c.strip() for c in caps)
    return list(by_image.values())


def from_hf_rows(rows, image_key: str = "image", caption_key: str = "caption", split_key: str | None = None,
                 split: str | None = None, id_key: str | None = None) -> list[KarpathyImage]:  # fmt: skip
    """Hub rows (one image per row, a list of captions) -> KarpathyImage entries with the PIL image as ``image``."""
    out = []
    for n, r in enumerate(rows):
        if split_key is not None and r[split_key] != split:
            continue
        caps = r[caption_key] if isinstance(r[caption_key], list) else [r[caption_key]]
        out.append(KarpathyImage(r[image_key], [str(c) for c in caps], str(r[id_key]) if id_key else str(n)))
    return out


def flatten(images: list[KarpathyImage], captions_per_image: int | None = None):
    """(captions, caption_image) for a gallery: every caption with the index of its image. With
    ``captions_per_image`` each image keeps exactly that many (COCO test: 5; images with fewer are an error)."""
    caps, owner = [], []
    for i, im in enumerate(images):
        c = im.captions
        if captions_per_image is not None:
            if len(c) < captions_per_image:
                raise KarpathyFormatError(f"image {im.image!r} has {len(c)} captions < {captions_per_image}")
            c = c[:captions_per_image]
        caps.extend(c)
        owner.extend([i] * len(c))
    return caps, owner
