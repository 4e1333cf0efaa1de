"""Real image sets for the full-scale presets, through Hugging Face ``datasets``.

``hf_image_dataset`` loads a hub data set by name (honours HF_DATASETS_OFFLINE); ``image_folder_dataset`` loads a
local folder of images (optionally in class sub-folders) through the same library's ``imagefolder`` builder. Both
return a torch-style data set of dicts ``{"image": float tensor (C, H, W) in [-1, 1], "label": int}``.

Left out: on-the-fly augmentation beyond a centre crop and horizontal flip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _to_tensor(img: Image.Image, resolution: int, channels: int, flip: bool) -> torch.Tensor:
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((resolution, resolution), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    t = torch.from_numpy(arr).reshape(resolution, resolution, channels).permute(2, 0, 1).contiguous()
    return t.flip(-1) if flip else t


class _Wrapped(torch.utils.data.Dataset):
    def __init__(self, ds, resolution, channels, image_column, label_column, hflip):
        self.ds, self.resolution, self.channels = ds, resolution, channels
        self.image_column, self.label_column, self.hflip = image_column, label_column, hflip

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[int(i)]
        flip = self.hflip and bool(torch.randint(0, 2, ()).item())
        out = {"image": _to_tensor(row[self.image_column], self.resolution, self.channels, flip)}
        if self.label_column and self.label_column in row:
            out["label"] = int(row[self.label_column])
        return out


def hf_image_dataset(
    name: str,
    split: str = "train",
    resolution: int = 64,
    image_column: str = "image",
    label_column: str | None = "label",
    channels: int = 3,
    hflip: bool = False,
    **load_kw,
):
    """A hub data set (e.g. 'ILSVRC/imagenet-1k'); the download needs network unless it is cached."""
    import datasets

    ds = datasets.load_dataset(name, split=split, **load_kw)
    if image_column not in ds.column_names:
        raise KeyError(f"{name} has no column {image_column!r}; columns: {ds.column_names}")
    return _Wrapped(ds, resolution, channels, image_column, label_column, hflip)


def image_folder_dataset(path, resolution: int = 64, channels: int = 3, hflip: bool = False):
    """Images under ``path`` (class sub-folders give labels), via datasets' 'imagefolder' builder."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} does not exist")
    ds = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
    return _Wrapped(ds, resolution, channels, "image", "label", hflip)
