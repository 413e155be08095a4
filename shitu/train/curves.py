"""A run's ``metrics.jsonl`` drawn as ``curves.png``: losses, learning rate, validation recall@1."""

from __future__ import annotations

import json
from pathlib import Path


def plot_curves(run_dir: Path):
    """Draw the curves; without matplotlib, nothing (the numbers stay in metrics.jsonl)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    epochs = [r["epoch"] for r in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("loss", "arc", "triplet", "distill"):
        if key in rows[-1]:
            axes[0].plot(epochs, [r.get(key) for r in rows], label=key)
    axes[0].set_title("losses")
    axes[0].legend()
    axes[1].plot(epochs, [r["lr"] for r in rows])
    axes[1].set_title("learning rate")
    for key in ("val_recall@1", "distill_val_recall@1"):
        validated = [r for r in rows if key in r]
        if validated:
            axes[2].plot([r["epoch"] for r in validated], [r[key] for r in validated], marker="o", label=key)
            axes[2].legend()
    axes[2].set_title("validation recall@1")
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(run_dir / "curves.png", dpi=80)
    plt.close(figure)
