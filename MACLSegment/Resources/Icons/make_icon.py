"""Draw the module icon (128x128 PNG): a heart outline with a short-axis segmentation overlay.

Run from anywhere: ``python MACLSegment/Resources/Icons/make_icon.py``; writes the icon here and at the
repository root (the extension icon). Needs numpy and scikit-image.
"""

import os

import numpy as np
from skimage import draw, io, morphology, transform

SIZE, SCALE = 128, 4  # drawn at 4x, then downsampled for smooth edges
# The cardiac schema's colours (MACLCore labels.CARDIAC): RV cavity, LV myocardium, LV cavity.
RV, MYOCARDIUM, LV = (0.302, 0.584, 0.929), (0.384, 0.780, 0.361), (0.890, 0.337, 0.278)
OUTLINE = (0.80, 0.10, 0.16)


def heart(n: int = 400) -> np.ndarray:
    """(row, col) points of a heart curve filling the canvas."""
    t = np.linspace(0, 2 * np.pi, n)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    canvas = SIZE * SCALE
    half = canvas * 0.46 / 17
    return np.stack([canvas * 0.46 - y * half, canvas / 2 + x * half], axis=1)


def blend(image: np.ndarray, mask: np.ndarray, color, alpha: float) -> None:
    image[mask, :3] = (1 - alpha) * image[mask, :3] + alpha * np.asarray(color)
    image[mask, 3] = np.maximum(image[mask, 3], alpha)


def draw_icon() -> np.ndarray:
    canvas = SIZE * SCALE
    image = np.zeros((canvas, canvas, 4))
    points = heart()
    inside = np.zeros((canvas, canvas), bool)
    inside[draw.polygon(points[:, 0], points[:, 1], inside.shape)] = True
    blend(image, inside, (1.0, 0.93, 0.93), 0.9)

    def disk(center, radius):
        mask = np.zeros((canvas, canvas), bool)
        mask[draw.disk(center, radius, shape=mask.shape)] = True
        return mask

    centre = (canvas * 0.50, canvas * 0.57)
    outer, cavity = disk(centre, canvas * 0.17), disk(centre, canvas * 0.105)
    rv = disk((canvas * 0.47, canvas * 0.35), canvas * 0.15) & ~disk(centre, canvas * 0.20) & inside
    blend(image, rv, RV, 0.85)
    blend(image, outer & ~cavity, MYOCARDIUM, 0.85)
    blend(image, cavity, LV, 0.85)

    pen = morphology.disk(int(SCALE * 2.5))  # the outline: a band around the heart's edge
    outline = morphology.dilation(inside, pen) & ~morphology.erosion(inside, pen)
    blend(image, outline, OUTLINE, 1.0)
    # Downsample with premultiplied alpha, so that edges do not darken.
    premultiplied = np.concatenate([image[..., :3] * image[..., 3:], image[..., 3:]], axis=2)
    small = transform.resize(premultiplied, (SIZE, SIZE, 4), anti_aliasing=True)
    alpha = small[..., 3:]
    return np.concatenate([small[..., :3] / np.maximum(alpha, 1e-6), alpha], axis=2)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "..", "..", ".."))
    icon = (np.clip(draw_icon(), 0, 1) * 255).astype(np.uint8)
    for path in (os.path.join(here, "MACLSegment.png"), os.path.join(root, "MACLSegment.png")):
        io.imsave(path, icon, check_contrast=False)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
