"""The augmented views `vqgen encode --augment` stores codes of (their names and order: VIEWS).

flip: the image and its left-right mirror. ten-crop: LlamaGen's (autoregressive/train/extract_codes_c2i.py, after
torchvision's TenCrop): the images are prepared at `crop_size(S)` = int(1.1 S) px, and each gives its four corner
crops and centre crop of S px, then the same five of its mirror image.
"""

import torch
from vqgen.stages.core.errors import UserError

CROP_RANGE = 1.1  # LlamaGen's --crop-range
# --augment -> the views encoded per training image, in row order (the validation split keeps VIEW_OF_VALIDATION)
VIEWS = {
    "none": ["image"],
    "flip": ["image", "flipped"],
    # LlamaGen's ten-crop (torchvision TenCrop of a 1.1x centre crop): four corners, the centre, then the same
    # five of the left-right flipped image
    "ten-crop": ["top-left", "top-right", "bottom-left", "bottom-right", "centre"]
    + [f"flipped {v}" for v in ("top-left", "top-right", "bottom-left", "bottom-right", "centre")],
}
VIEW_OF_VALIDATION = {"none": 0, "flip": 0, "ten-crop": 4}
# --augment auto (the default): flip for RGB images, none for grey ones (digits and letters read one way round).
# (on 1,615 RGB emoji the mirror images' codes lowered the transformer's held-out NLL: docs, your own small dataset)
AUTO = "auto"


def resolve_augment(augment: str, channels: int) -> str:
    """The views `augment` stands for on images of `channels`: "auto" is flip for RGB and none for grey."""
    if augment != AUTO:
        return augment
    return "flip" if channels == 3 else "none"


def crop_size(size: int) -> int:
    return int(size * CROP_RANGE)


def source_size(augment: str, size: int) -> int:
    """The size the images are prepared at for a tokenizer of `size` px: larger for ten-crop, whose views are
    crops of `size` px."""
    return crop_size(size) if augment == "ten-crop" else size


def check_augment(augment: str, size: int | None = None) -> None:
    """One line (UserError) for an augmentation the tokenizer of `size` px cannot express, before anything is read
    or trained: an unknown name, or a ten-crop whose crops would all be the image itself (under 10 px, int(1.1 S)
    is S). `encode` and `tokenize` both ask here."""
    if augment not in (*VIEWS, AUTO):
        raise UserError(f"--augment must be one of {', '.join((*VIEWS, AUTO))}, got {augment!r}")
    if size is not None and augment == "ten-crop" and crop_size(size) <= size:
        raise UserError(
            f"--augment ten-crop needs images of at least 10 px: its crops of {size} px would all be the whole "
            f"{crop_size(size)} px image; use --augment flip"
        )


def five_crop(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """torchvision's five_crop on (B, C, H, W): top-left, top-right, bottom-left, bottom-right, centre."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return [
        x[..., :size, :size],
        x[..., :size, w - size :],
        x[..., h - size :, :size],
        x[..., h - size :, w - size :],
        x[..., top : top + size, left : left + size],
    ]


def make_views(x: torch.Tensor, augment: str, size: int) -> torch.Tensor:
    """(B, C, H, W) images -> (B * V, C, size, size): each image's V views, consecutive, in VIEWS order."""
    if augment == "none":
        return x
    if augment == "flip":
        views = [x, x.flip(-1)]
    elif augment == "ten-crop":
        views = five_crop(x, size) + five_crop(x.flip(-1), size)
    else:
        raise ValueError(f"unknown augment {augment!r}")
    return torch.stack(views, 1).flatten(0, 1)


def validation_view(x: torch.Tensor, augment: str, size: int) -> torch.Tensor:
    """The one view a validation image is encoded in: itself, or for ten-crop its centre crop."""
    return five_crop(x, size)[4] if augment == "ten-crop" else x
