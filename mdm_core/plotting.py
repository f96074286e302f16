"""The loss / validation-NLL curve of one run as a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

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
