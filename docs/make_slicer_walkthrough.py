"""Draw docs/slicer_walkthrough.png: the MACLSegment module's sections and what flows between Slicer and
the background ``maclcore`` process. Run: ``python docs/make_slicer_walkthrough.py`` (needs matplotlib)."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

SECTIONS = [
    ("1. Setup", "torch + MACLCore installed?\nGPUs usable?  [Install]"),
    ("2. Pretrain", "unlabelled volumes (scene / folder)\nepochs, batch, GPUs -> pretrained.pt"),
    ("3. Annotate", "new segmentation per case:\nRV cavity, LV myocardium, LV cavity\n-> Segment Editor"),
    ("4. Finetune", "annotated cases (schema checked,\nnon-empty) + pretrained.pt -> model.pt"),
    ("5. Segment", "model.pt + volume -> NEW node\n'<volume> MACL segmentation'"),
]
PROCESS = [
    ("maclcore pretrain", "NRRD volumes in\nCancel: stop file, exit 130,\nresume later"),
    ("", ""),
    ("maclcore finetune", "NRRD volumes + label maps in\nCancel: stop file, exit 130,\nresume later"),
    ("maclcore predict", "NRRD in, .seg.nrrd out\nCancel: terminate"),
]
BLUE, GREEN, GREY, RED = "#4d95ed", "#62c75c", "#888888", "#e35647"


def box(ax, x, y, w, h, title, text, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.04",
                                facecolor=color + "22", edgecolor=color, linewidth=1.8))
    ax.text(x + w / 2, y + h - 0.09, title, ha="center", va="top", fontsize=11, weight="bold")
    ax.text(x + w / 2, y + h / 2 - 0.08, text, ha="center", va="center", fontsize=8.5)


def arrow(ax, start, end, color=GREY, text="", style="-|>"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color=color, linewidth=1.5))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.04, text, fontsize=7.5, color=color,
                ha="center", va="bottom")


def main() -> None:
    fig, ax = plt.subplots(figsize=(11, 7.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 7.2)
    ax.axis("off")
    ax.text(0.3, 7.0, "3D Slicer: MACLSegment module", fontsize=12, weight="bold", color=BLUE, va="top")
    ax.text(0.3, 6.72, "Widget -> Logic; the GUI polls the job every 250 ms and never blocks", fontsize=8.5,
            color=BLUE, va="top")
    ax.text(7.2, 7.0, "Background process", fontsize=12, weight="bold", color=GREEN, va="top")
    ax.text(7.2, 6.72, "python -m maclcore ... --progress json", fontsize=8.5, color=GREEN, va="top")
    ax.plot([6.85, 6.85], [0.2, 6.9], color=GREY, linestyle="--", linewidth=1)
    top, height, gap = 5.55, 0.95, 0.22
    for index, (title, text) in enumerate(SECTIONS):
        y = top - index * (height + gap)
        box(ax, 0.3, y, 3.6, height, title, text, BLUE)
        if index:
            arrow(ax, (2.1, y + height + gap - 0.02), (2.1, y + height + 0.02))
        if index >= 1 and PROCESS[index - 1][0]:
            name, files = PROCESS[index - 1]
            box(ax, 7.2, y, 3.4, height, name, files, GREEN)
            arrow(ax, (3.95, y + height * 0.68), (7.15, y + height * 0.68), BLUE, "files written by Slicer")
            arrow(ax, (7.15, y + height * 0.22), (3.95, y + height * 0.22), GREEN,
                  "JSON progress lines, then the result")
    ax.text(4.1, 0.35, "Result: segmentation node with named, coloured segments on the volume's grid,\n"
                       "editable at once in the Segment Editor; an existing segmentation is never overwritten.",
            fontsize=9, color=RED)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slicer_walkthrough.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
