"""Image folders as data: which files are read, and as which classes (rules in :func:`image_folder_files`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OTHER_IMAGE_SUFFIXES = (".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".heic", ".avif", ".jp2")
IGNORED_NAMES = ("__MACOSX",)  # besides every name that starts with "."


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_NAMES)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror}); check its permissions") from None


def _images_in(folder: Path, entries: list[Path]) -> list[Path]:
    other = [p for p in entries if p.suffix.lower() in OTHER_IMAGE_SUFFIXES and p.is_file()]
    if other:
        raise DataError(f"{other[0]}: {other[0].suffix} images are not read (flowsteer reads PNG and JPEG only); "
                        f"convert {'it' if len(other) == 1 else f'the {len(other)} such files'} to PNG")
    return [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def image_folder_files(path: Path) -> tuple[list[Path], list[int] | None]:
    """The images of an image folder and their class numbers (None without classes).

    The rules (as in the README's data section):
    * names that start with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.png``) and ``__MACOSX``
      are ignored, at both levels;
    * images are files ending in ``.png``, ``.jpg`` or ``.jpeg`` (any case); other image formats (``.gif``,
      ``.bmp``, ``.webp``, ``.tif`` ...) are refused rather than skipped; any other file (``README.md``,
      ``labels.csv``, ``Thumbs.db``) is ignored;
    * a folder of images alone is one unlabelled data set; a folder of sub-folders alone is a labelled one: each
      sub-folder is a class, numbered 0, 1, ... in the sorted order of the names.  A class folder holds images
      only: an empty class folder, or one with a folder inside, is refused;
    * a folder with both images and sub-folders is refused (are the sub-folders classes?), as is one with no image.
    """
    entries = _visible(path)
    subdirs = [p for p in entries if p.is_dir()]
    top = _images_in(path, entries)
    if subdirs and top:
        raise DataError(f"{path}: holds both images ({top[0].name}, {len(top)} in all) and sub-folders "
                        f"({subdirs[0].name}/ ...), which would be classes; move the top-level images into a class "
                        "folder, or the sub-folders out")
    if not subdirs:
        if not top:
            raise DataError(f"{path}: folder has no PNG or JPEG images (names starting with '.' are ignored); "
                            "put the images in it, or in one sub-folder per class")
        return top, None
    files: list[Path] = []
    labels: list[int] = []
    for i, d in enumerate(subdirs):
        inside = _visible(d)
        nested = [p for p in inside if p.is_dir()]
        if nested:
            raise DataError(f"{d}: class folder holds a folder ({nested[0].name}/); class folders hold images only "
                            "(one level below --data): move its images up, or remove it")
        found = _images_in(d, inside)
        if not found:
            raise DataError(f"{d}: class folder has no PNG or JPEG images; add images or remove the folder")
        files += found
        labels += [i] * len(found)
    return files, labels


def load_image_folder(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image

    files, classes = image_folder_files(path)
    images, sizes, modes = [], {}, set()
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                modes.add("L" if im.mode in ("L", "1", "I;16") else "RGB")
                images.append(im.copy())
                sizes.setdefault(im.size, f.name)
        except Exception as exc:
            raise DataError(f"{f}: cannot read image ({exc}); remove or re-save it") from None
    if len(sizes) > 1:
        listing = ", ".join(f"{w}x{h} (e.g. {name})" for (w, h), name in list(sizes.items())[:3])
        raise DataError(f"{path}: images have different sizes: {listing}; resize them to one size first")
    mode = "L" if modes == {"L"} else "RGB"
    arr = np.stack([np.asarray(im.convert(mode), dtype=np.float32) for im in images])
    arr = arr[:, None] if mode == "L" else arr.transpose(0, 3, 1, 2)
    labels = np.array(classes, dtype=np.int64) if classes is not None else None
    return arr / 127.5 - 1.0, labels
