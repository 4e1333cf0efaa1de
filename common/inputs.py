"""Checks of what a run reads and writes, made before anything is downloaded, loaded or trained.

Each helper raises :class:`common.config.UserInputError` with one line that names the config key, the path or
model id, and the fix. Nothing here writes a file. Configs call them from ``check_inputs()`` (see
:class:`common.config.BaseConfig`), so ``--dry-run`` catches the same problems as a real run.

Left out: checking that remote datasets exist (only the offline cache is looked at).
"""

from __future__ import annotations

import os
from pathlib import Path

from common.config import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def require_writable_dir(key: str, path: str) -> Path:
    """``path`` is a folder that exists and is writable, or can be created under a writable existing folder."""
    p = Path(path).expanduser()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{key}: {path} is a file, not a folder; choose a folder (--set {key}=DIR)")
    if probe.exists() and not probe.is_dir():
        raise UserInputError(f"{key}: {probe} is a file, so {path} cannot be created; choose another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserInputError(f"{key}: {probe} is not writable, so {path} cannot be written; choose another folder")
    return p


def require_file(key: str, path: str, *, nonempty: bool = True) -> Path:
    """``path`` is an existing regular file (with at least one non-blank line when ``nonempty``)."""
    p = Path(path).expanduser()
    if not str(path):
        raise UserInputError(f"{key}: no file given; set it with --set {key}=PATH")
    if not p.exists():
        raise UserInputError(f"{key}: {path} does not exist")
    if not p.is_file():
        raise UserInputError(f"{key}: {path} is not a file")
    if nonempty:
        try:
            with open(p, "rb") as f:
                has_content = any(line.strip() for line in f)
        except OSError as e:
            raise UserInputError(f"{key}: {path} cannot be read ({e.strerror})") from None
        if not has_content:
            raise UserInputError(f"{key}: {path} is empty")
    return p


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def require_image_dir(key: str, path: str, *, verify: bool = True) -> list[Path]:
    """``path`` is a folder holding at least one image, every one of which has a readable header."""
    if not str(path):
        raise UserInputError(f"{key}: no folder given; set it with --set {key}=DIR")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserInputError(f"{key}: {path} does not exist")
    if not p.is_dir():
        raise UserInputError(f"{key}: {path} is not a folder of images")
    files = image_files(p)
    if not files:
        raise UserInputError(f"{key}: {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if verify:
        from PIL import Image, UnidentifiedImageError

        for f in files:
            try:
                with Image.open(f) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise UserInputError(f"{key}: {f} is not a readable image ({type(e).__name__}); remove it") from None
    return files


def require_data_source(key: str, name: str) -> None:
    """An image folder (checked like :func:`require_image_dir`) or a ``datasets`` name; a path that does not exist is
    reported as such instead of being looked up on the Hub."""
    p = Path(name).expanduser()
    if p.exists() or name.startswith(("/", "./", "../", "~")):
        require_image_dir(key, name)


def require_model(key: str, name: str, *, file: str = "config.json") -> str:
    """``name`` is a local model folder, or a Hub id that is cached (always required when offline).

    A string that looks like a path but does not exist is reported as a missing folder, not sent to the Hub
    (where it would surface as "couldn't connect" or a tokenizer-dependency error).
    """
    if not name:
        raise UserInputError(f"{key}: no model given; set it with --set {key}=PATH_OR_HUB_ID")
    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir() and not (p / file).exists() and not any(p.glob("*.safetensors")) and not any(p.glob("*.pt")):
            raise UserInputError(f"{key}: {name} is a folder without {file} or weights; is it the model folder?")
        return name
    is_hub_id = name.count("/") == 1 and not name.startswith(("/", ".", "~")) and not name.endswith("/")
    if not is_hub_id:
        raise UserInputError(f"{key}: {name} does not exist (not a folder, and not a Hub id like org/name)")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, file)
    if not isinstance(cached, str) and _offline():
        raise UserInputError(
            f"{key}: {name} is not a local folder and not in the Hugging Face cache, and the Hub is offline "
            f"(HF_HUB_OFFLINE); download it where there is network (`hf download {name}`) or pass a local folder"
        )
    return name
