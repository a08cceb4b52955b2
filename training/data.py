"""Image folders (one subfolder per class) into arrays, and the built-in `digits` dataset.

Images are decoded with `core.imaging.decode_image`, the function the server uses, so
training and serving see identical pixels. Unreadable files are skipped and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.imaging import ImageError, decode_image
from training.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
TRAIN_DIR_NAMES = ("training_set", "train")
TEST_DIR_NAMES = ("test_set", "test")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]
    files: list[Path]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index], [self.files[i] for i in index])


@dataclass
class Dataset:
    class_names: list[str]
    train: Split
    test: Split
    test_source: str  # "folder" or "split"
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def find_layout(root: Path, test_root: Path | None = None) -> tuple[Path, Path | None]:
    """The training folder and the test folder (None: split the training folder)."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    train = root
    test = test_root
    for name in TRAIN_DIR_NAMES:
        if (root / name).is_dir():
            train = root / name
            if test is None:
                test = next((root / t for t in TEST_DIR_NAMES if (root / t).is_dir()), None)
            break
    if test is not None and not test.is_dir():
        raise DataError(f"test folder {test} does not exist")
    return train, test


def class_names(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"{folder} has {len(names)} class folder(s); at least 2 are needed (one subfolder per class)")
    for name in names:
        if not _image_files(folder / name):
            raise DataError(f"class folder {folder / name} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return names


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_split(
    folder: Path,
    classes: list[str],
    *,
    size: tuple[int, int],
    resize_method: str = "bilinear",
    max_per_class: int | None = None,
    skipped: list[tuple[str, str]],
    digest: hashlib._Hash,
) -> Split:
    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[Path] = []
    for index, name in enumerate(classes):
        class_dir = folder / name
        paths = _image_files(class_dir) if class_dir.is_dir() else []
        loaded = 0
        for path in paths:
            if max_per_class is not None and loaded >= max_per_class:
                break
            data = path.read_bytes()
            try:
                array = decode_image(data, size=size, resize_method=resize_method)
            except ImageError as exc:
                skipped.append((str(path), str(exc)))
                continue
            digest.update(f"{path.relative_to(folder.parent)}\0".encode())
            digest.update(hashlib.sha256(data).digest())
            images.append(array)
            labels.append(index)
            files.append(path)
            loaded += 1
        if loaded == 0:
            raise DataError(f"class folder {class_dir} has no readable images")
    return Split(np.stack(images), np.asarray(labels, dtype=np.int32), files)


def load_dataset(
    root: Path,
    *,
    size: tuple[int, int],
    test_root: Path | None = None,
    validation_split: float = 0.2,
    seed: int = 42,
    max_per_class: int | None = None,
    resize_method: str = "bilinear",
) -> Dataset:
    train_dir, test_dir = find_layout(root, test_root)
    classes = class_names(train_dir)
    skipped: list[tuple[str, str]] = []
    digest = hashlib.sha256()
    train = load_split(
        train_dir,
        classes,
        size=size,
        resize_method=resize_method,
        max_per_class=max_per_class,
        skipped=skipped,
        digest=digest,
    )
    if test_dir is not None:
        extra = sorted({p.name for p in test_dir.iterdir() if p.is_dir()} - set(classes))
        if extra:
            raise DataError(f"test folder {test_dir} has classes not in {train_dir}: {', '.join(extra)}")
        test_max = None if max_per_class is None else max(1, max_per_class // 2)
        test = load_split(
            test_dir,
            classes,
            size=size,
            resize_method=resize_method,
            max_per_class=test_max,
            skipped=skipped,
            digest=digest,
        )
        source = "folder"
    else:
        if not 0 < validation_split < 1:
            raise DataError(f"validation split must be between 0 and 1, got {validation_split}")
        train, test = stratified_split(train, validation_split, seed, classes)
        source = "split"
    return Dataset(classes, train, test, source, f"sha256:{digest.hexdigest()}", skipped)


def stratified_split(split: Split, fraction: float, seed: int, classes: list[str]) -> tuple[Split, Split]:
    """Hold out ``fraction`` of every class, chosen with a fixed seed. ``classes``: the class names,
    by label."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        rng.shuffle(members)
        count = max(1, round(len(members) * fraction))
        if count >= len(members):
            raise DataError(
                f"class {classes[label]!r} has {len(members)} image(s): too few to hold {count} out for testing "
                "and train on the rest; add images, or give a held-out folder (--test-data)"
            )
        held.extend(members[:count].tolist())
    held_index = np.array(sorted(held))
    keep_index = np.setdiff1d(np.arange(len(split)), held_index)
    return split.subset(keep_index), split.subset(held_index)


def write_digits(directory: Path) -> tuple[int, int]:
    """Write scikit-learn's 1,797 handwritten digits as PNGs: training_set/ and test_set/, one folder per digit.

    The held-out 20% is fixed (stratified, seed 0), so every run tests on the same images.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    index = np.arange(len(pixels))
    train_idx, test_idx = train_test_split(
        index, test_size=DIGITS_TEST_FRACTION, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    for split_name, idx in (("training_set", train_idx), ("test_set", test_idx)):
        for i in idx:
            target = directory / split_name / str(digits.target[i])
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], mode="L").save(target / f"{i:04d}.png")
    return len(train_idx), len(test_idx)
