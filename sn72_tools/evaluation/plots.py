"""PNG figures of an evaluation: a reliability diagram and a cost-vs-MCC curve (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt

from sn72_tools.evaluation.metrics import reliability_bins
from sn72_tools.evaluation.report import Evaluation


def reliability_diagram(evaluations: dict[str, Evaluation], path: Path) -> Path:
    """Fraction labelled roadwork against mean predicted probability, per expert and for the cascade."""
    fig, axes = plt.subplots(1, len(evaluations), figsize=(6 * len(evaluations), 5), squeeze=False)
    for ax, (title, evaluation) in zip(axes[0], evaluations.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
        for name, probabilities in evaluation.probabilities.items():
            bins = reliability_bins(evaluation.labels, probabilities)
            filled = bins.counts > 0
            style = {"linewidth": 2.5, "color": "black"} if name == "deployed" else {"linewidth": 1.2}
            ax.plot(bins.mean_predicted[filled], bins.fraction_positive[filled], marker="o", label=name, **style)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(roadwork)", ylabel="fraction labelled roadwork",
               title=f"reliability: {title}")
        ax.axvline(0.5, color="red", linewidth=0.8, alpha=0.5)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cost_vs_mcc(evaluations: dict[str, Evaluation], path: Path) -> Path:
    """MCC against expert-seconds per image as one exit margin sweeps 0..0.5; the deployed point marked."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for title, evaluation in evaluations.items():
        costs_ms = [point["expert_seconds_per_image"] * 1000 for point in evaluation.sweep]
        line = ax.plot(costs_ms, [point["mcc"] for point in evaluation.sweep], marker=".", label=f"{title}: sweep")
        cost_s, mcc = evaluation.deployed_point
        ax.scatter([cost_s * 1000], [mcc], s=120, marker="*", color=line[0].get_color(), zorder=3,
                   label=f"{title}: deployed")
    ax.set(xlabel="expert-milliseconds per image", ylabel="MCC (validators' rounding)",
           title="cost against MCC (uniform exit margin 0 .. 0.5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
