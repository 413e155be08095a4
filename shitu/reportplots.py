"""The report's three plots as PNG bytes, drawn with matplotlib (the optional ``report`` extra).

Kept apart from ``shitu.report`` so that the report still has its tables and photos without matplotlib.
"""

from __future__ import annotations

import io

import numpy as np

RIGHT, WRONG, UNKNOWN, REJECTED = "#2a9d4b", "#d1495b", "#6c5ce7", "#8d99ae"


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def score_range(scores: list[float]) -> tuple[float, float]:
    """From the 1st percentile to the highest score: a few far-off scores would squeeze the rest into a
    sliver (the shipped model puts almost every top-1 score between 0.9 and 1.0)."""
    values = np.asarray(scores, dtype=float)
    low = float(np.percentile(values, 1)) if len(values) >= 100 else float(values.min())
    high = float(values.max())
    margin = max(high - low, 1e-3) * 0.02
    return low - margin, high + margin


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    figure.clf()
    return buffer.getvalue()


def score_histograms(plt, right: list[float], wrong: list[float], unknown: list[float],
                     threshold: float | None) -> bytes:
    """Top-1 scores of right, wrong and unknown answers on shared bins: where they overlap, no
    threshold separates them."""
    figure = plt.figure(figsize=(7, 3.4))
    axes = figure.add_subplot()
    low, high = score_range(right + wrong + unknown)
    bins = np.linspace(low, high, 41)
    for values, colour, name in ((right, RIGHT, "known, right"), (wrong, WRONG, "known, wrong"),
                                 (unknown, UNKNOWN, "unknown")):
        if values:
            axes.hist(values, bins=bins, histtype="stepfilled", alpha=0.45, color=colour,
                      label=f"{name} ({len(values)})", density=True)
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    axes.set_xlim(low, high)
    axes.set_xlabel("top-1 score (cosine)" + (" (the lowest 1% of scores lie to the left)" if len(right + wrong + unknown)
                                              >= 100 else ""))
    axes.set_ylabel("density")
    axes.legend(fontsize=8)
    return png(figure)


def recall_curve(plt, recalls: dict[int, float]) -> bytes:
    figure = plt.figure(figsize=(4.5, 3.4))
    axes = figure.add_subplot()
    ks = sorted(recalls)
    axes.plot(ks, [recalls[k] for k in ks], marker="o", color=RIGHT)
    for k in ks:
        axes.annotate(f"{recalls[k]:.3f}", (k, recalls[k]), textcoords="offset points", xytext=(0, 6),
                      ha="center", fontsize=7)
    axes.set_xticks(ks)
    axes.set_xlabel("k")
    axes.set_ylabel("recall@k")
    axes.set_ylim(min(recalls.values()) - 0.05, 1.02)
    axes.grid(alpha=0.3)
    return png(figure)


def threshold_curve(plt, curve, chosen) -> bytes:
    """The four fractions against the threshold, and the chosen point."""
    figure = plt.figure(figsize=(7, 3.4))
    axes = figure.add_subplot()
    # the last threshold only steps above the highest score; stepping draws the plateaus honestly
    for values, colour, name in ((curve.known_right, RIGHT, "known right"), (curve.known_wrong, WRONG, "known wrong"),
                                 (curve.known_rejected, REJECTED, "known rejected"),
                                 (curve.unknown_rejected, UNKNOWN, "unknown rejected")):
        axes.step(curve.thresholds, values, where="post", color=colour, label=name)
    axes.axvline(chosen.threshold, color="black", linestyle="--", linewidth=1)
    axes.plot([chosen.threshold] * 2, [chosen.known_right, chosen.unknown_rejected], "ko", markersize=4)
    axes.annotate(f"threshold {chosen.threshold:.3f}", (chosen.threshold, 0.5), textcoords="offset points",
                  xytext=(4, 0), fontsize=8)
    scores = curve.thresholds[:-1] if len(curve.thresholds) > 1 else curve.thresholds
    axes.set_xlim(*score_range(list(scores)))
    axes.set_xlabel("threshold (answered when top-1 score >= threshold)")
    axes.set_ylabel("fraction of queries")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize=8, loc="center left")
    axes.grid(alpha=0.3)
    return png(figure)
