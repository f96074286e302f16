"""Writing one run's metrics to TensorBoard event files (imports torch's ``SummaryWriter``)."""

from __future__ import annotations

import re
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from mdm_plugin_tensorboard.config import TensorBoardConfig

#: The prefix of the ``nll_by_t`` evaluator's metrics, one per t bucket (``all``: their mean).
NLL_BY_T = "val/nll_by_t/"


def tag(key: str) -> str:
    """The TensorBoard tag of a metric: training values under ``train/``, evaluation values
    under their ``val/`` key, and the NLL-by-t buckets in a group of their own (``nll_by_t/``),
    since TensorBoard groups charts by a tag's first component."""
    if key.startswith(NLL_BY_T):
        return "nll_by_t/" + key.removeprefix(NLL_BY_T)
    return key if key.startswith("val/") else f"train/{key}"


class TensorBoardLogger:
    """The event writer of one run on its main process.

    The writer opens at the first logged step: when the folder already holds event files (a run
    resumed from a checkpoint), TensorBoard is told to drop what an earlier process logged from
    that step on, so resumed curves do not double back.
    """

    def __init__(self, run_dir: Path, config: TensorBoardConfig) -> None:
        self.run_dir = run_dir
        self.config = config
        self.log_dir = config.directory(run_dir)
        self.writer: SummaryWriter | None = None
        self.step = 0
        self.grouped = False  # whether the NLL-by-t chart layout is written

    def _open(self, step: int) -> SummaryWriter:
        if self.writer is None:
            resumed = any(self.log_dir.glob("events.out.tfevents.*"))
            self.writer = SummaryWriter(
                str(self.log_dir), flush_secs=self.config.flush_secs, purge_step=step if resumed else None
            )
            spec = self.run_dir / "resolved.yaml"
            if spec.is_file():  # four-space indent: TensorBoard renders text as markdown
                self.writer.add_text("spec", _code(spec.read_text()), step)
        self.step = step
        return self.writer

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        """One step's metrics (training or evaluation) as scalars."""
        writer = self._open(step)
        for key, value in metrics.items():
            writer.add_scalar(tag(key), value, step)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """An evaluation's metrics, flushed at once so that a crash loses no evaluated point. The
        NLL-by-t buckets are also laid out as one multi-line chart (TensorBoard's custom scalars)."""
        self.scalars(step, metrics)
        writer = self._open(step)
        buckets = [tag(k) for k in metrics if k.startswith(NLL_BY_T) and k != f"{NLL_BY_T}all"]
        if buckets and not self.grouped:
            chart = ["Multiline", [re.escape(b) for b in buckets]]
            writer.add_custom_scalars({"nll_by_t": {"NLL by t bucket (nats/token)": chart}})
            self.grouped = True
        writer.flush()

    def finish(self) -> None:
        """Add the run's samples as text (if asked and written) and close the event file."""
        samples = self.run_dir / "samples.txt"
        if self.config.samples and samples.is_file():
            self._open(self.step).add_text("samples", _code(samples.read_text()), self.step)
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _code(text: str) -> str:
    """``text`` verbatim in TensorBoard's markdown text view."""
    return "\n".join("    " + line for line in text.splitlines())
