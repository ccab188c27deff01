"""Dataset layouts behind one interface: MVTec AD, MVTec LOCO AD and an anomalib-style
Folder layout.

:func:`resolve_layout` turns the command-line options into a :class:`Layout` with
``train_files()``, ``validation_files()`` (an explicit validation split, or [] when it
is to be cut from the training normals) and ``test_samples()``.

* ``mvtec`` / ``mvtec_loco``: ``--data ROOT --category NAME``; LOCO is recognised by
  its ``validation/good`` folder (its validation split) and its mask folders
  (``ground_truth/<defect>/<id>/000.png ...``, OR-ed; see :func:`.mvtec.load_mask`).
* ``folder``: ``--normal-dir`` (training normals), ``--abnormal-dir`` (anomalous test
  images, defect "abnormal"), ``--mask-dir`` (their masks: the same relative path and
  name, or the same name with ``.png``, or ``<stem>_mask.png``), ``--normal-test-dir``
  (normal test images). Without ``--normal-test-dir`` a deterministic 20 % of
  ``--normal-dir`` (``split_train_val(files, 0.2, seed)``, as anomalib's
  normal_split_ratio) is the normal test part and is left out of ``train_files()``.
  Without ``--mask-dir`` there are no pixel metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .mvtec import (
    DataLayoutError,
    Sample,
    image_files,
    list_test_samples,
    list_train_files,
    list_validation_files,
    split_train_val,
)

FOLDER_TEST_FRACTION = 0.2


@dataclass
class Layout:
    """One dataset's splits; ``name`` names it in outputs (the category)."""

    kind: str  # "mvtec" | "mvtec_loco" | "folder"
    name: str
    root: Path
    has_masks: bool = True
    options: dict = field(default_factory=dict)

    def train_files(self) -> list[Path]:
        if self.kind != "folder":
            return list_train_files(self.root.parent, self.name)
        files = _images(self.options["normal_dir"], "--normal-dir")
        if self.options.get("normal_test_dir"):
            return files
        return split_train_val(files, FOLDER_TEST_FRACTION, self.options.get("seed", 0))[0]

    def validation_files(self) -> list[Path]:
        """The layout's own validation normals (LOCO's validation/good), else []."""
        return list_validation_files(self.root.parent, self.name) if self.kind == "mvtec_loco" else []

    def test_samples(self) -> list[Sample]:
        if self.kind != "folder":
            return list_test_samples(self.root.parent, self.name)
        return _folder_test_samples(self.options)


def _images(folder: str | Path, flag: str) -> list[Path]:
    return image_files(folder, f"{flag} {Path(folder)}")


def _mask_for(image: Path, abnormal_dir: Path, mask_dir: Path) -> Path:
    rel = image.relative_to(abnormal_dir)
    named = mask_dir / rel
    for cand in (named, named.with_suffix(".png"), named.with_name(f"{image.stem}_mask.png")):
        if cand.is_file():
            return cand
    raise DataLayoutError(
        f"--mask-dir {mask_dir} has no mask for {image} (looked for {rel.as_posix()}, "
        f"{rel.with_suffix('.png').as_posix()} and {(rel.parent / (image.stem + '_mask.png')).as_posix()})"
    )


def _folder_test_samples(o: dict) -> list[Sample]:
    normal_dir = Path(o["normal_dir"])
    if o.get("normal_test_dir"):
        base = Path(o["normal_test_dir"])
        normals = _images(base, "--normal-test-dir")
    else:
        base = normal_dir
        normals = split_train_val(_images(normal_dir, "--normal-dir"), FOLDER_TEST_FRACTION, o.get("seed", 0))[1]
    out = [Sample(f, "good", None, f.relative_to(base).as_posix()) for f in normals]
    if o.get("abnormal_dir"):
        ab = Path(o["abnormal_dir"])
        mask_dir = Path(o["mask_dir"]) if o.get("mask_dir") else None
        if mask_dir is not None and not mask_dir.is_dir():
            raise DataLayoutError(f"--mask-dir {mask_dir} is not a folder")
        for f in _images(ab, "--abnormal-dir"):
            mask = _mask_for(f, ab, mask_dir) if mask_dir is not None else None
            out.append(Sample(f, "abnormal", mask, f.relative_to(ab).as_posix()))
    return out


def resolve_layout(
    data: str | Path | None = None,
    category: str | None = None,
    normal_dir: str | Path | None = None,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    normal_test_dir: str | Path | None = None,
    seed: int = 0,
) -> Layout:
    """The layout the options name (DataLayoutError, naming the flags, when they
    conflict or are incomplete); folders are checked when their files are listed."""
    folder_flags = {"--abnormal-dir": abnormal_dir, "--mask-dir": mask_dir, "--normal-test-dir": normal_test_dir}
    if normal_dir is not None:
        if data is not None:
            raise DataLayoutError(
                "give either --data/--category (MVTec layout) or --normal-dir (Folder layout), not both"
            )
        if mask_dir is not None and abnormal_dir is None:
            raise DataLayoutError("--mask-dir needs --abnormal-dir (the masks are of the abnormal images)")
        opts = {"normal_dir": str(normal_dir), "abnormal_dir": abnormal_dir and str(abnormal_dir),
                "mask_dir": mask_dir and str(mask_dir), "normal_test_dir": normal_test_dir and str(normal_test_dir),
                "seed": seed}  # fmt: skip
        return Layout("folder", category or "folder", Path(normal_dir), mask_dir is not None, opts)
    given = [k for k, v in folder_flags.items() if v is not None]
    if given:
        raise DataLayoutError(f"{', '.join(given)} need(s) --normal-dir (the Folder layout)")
    if data is None or category is None:
        raise DataLayoutError(
            "name the data: --data ROOT --category NAME (MVTec AD / LOCO layout), or --normal-dir DIR "
            "[--abnormal-dir DIR --mask-dir DIR --normal-test-dir DIR] (Folder layout)"
        )
    cat = Path(data) / category
    if not cat.is_dir():
        raise DataLayoutError(f"category folder {cat} does not exist")
    gt = [d for d in (cat / "ground_truth").glob("*") if d.is_dir()]
    loco = (cat / "validation" / "good").is_dir() or any(p.is_dir() for d in gt for p in d.iterdir())
    return Layout("mvtec_loco" if loco else "mvtec", category, cat)
