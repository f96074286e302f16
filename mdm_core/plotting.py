"""Pictures of runs as PNGs (matplotlib, headless): one run's loss / validation-NLL curve, and the
``nll_by_t`` heat maps of ``mdm compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mdm_core.runs import read_metrics


def plot_curves(run_dir: Path, floor: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(run_dir)
    train = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval" and "val/nll" in m]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot([m["step"] for m in train], [m["loss"] for m in train], lw=1, alpha=0.6, label="train loss")
    if evals:
        ax.plot(
            [m["step"] for m in evals], [m["val/nll"] for m in evals], "o-", label="val NLL (uniform-t NELBO)"
        )
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label=f"entropy floor {floor:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_buckets(
    maps: dict[str, tuple[list[int], list[str], np.ndarray]],
    path: Path,
    baseline: str | None = None,
    axis: str = "t",
) -> Path:
    """Heat maps of a bucketed diagnostic (``nll_by_t``: t bucket × step; ``nll_by_context``:
    distance bucket × step), one column per arm, one colour scale for all; with a baseline among
    several arms, a second row shows arm − baseline at the steps both share (blue: the arm is
    lower, i.e. better, in that bucket)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    labels = list(maps)
    diff = baseline in maps and len(labels) > 1
    fig = Figure(figsize=(4.2 * len(labels) + 1.2, 3.6 * (2 if diff else 1)))
    axes = np.asarray(fig.subplots(2 if diff else 1, len(labels), squeeze=False))
    values = np.concatenate([grid.ravel() for _, _, grid in maps.values()])
    low, high = float(values.min()), float(values.max())
    for col, label in enumerate(labels):
        steps, names, grid = maps[label]
        ax = axes[0, col]
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=low, vmax=high)
        _bucket_axes(ax, steps, names, label, axis)
        fig.colorbar(image, ax=ax, label="nats/token")
        if not diff:
            continue
        ax = axes[1, col]
        base_steps, base_names, base_grid = maps[str(baseline)]
        shared = [s for s in steps if s in base_steps]
        if label == baseline or base_names != names or not shared:
            ax.set_axis_off()
            ax.set_title("baseline" if label == baseline else "no shared buckets/steps", fontsize=9)
            continue
        delta = (
            grid[:, [steps.index(s) for s in shared]] - base_grid[:, [base_steps.index(s) for s in shared]]
        )
        bound = float(np.abs(delta).max()) or 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        image = ax.imshow(delta, aspect="auto", origin="lower", cmap="RdBu_r", norm=norm)
        _bucket_axes(ax, shared, names, f"{label} − baseline", axis)
        fig.colorbar(image, ax=ax, label="Δ nats/token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _bucket_axes(ax: Any, steps: list[int], names: list[str], title: str, axis: str) -> None:
    every = max(1, -(-len(steps) // 6))
    ax.set_xticks(range(0, len(steps), every), [str(s) for s in steps[::every]])
    ax.set_yticks(range(len(names)), [f"{axis} {n}" for n in names], fontsize=7)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
