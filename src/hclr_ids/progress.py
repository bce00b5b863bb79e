"""Progress bars for long pipeline steps, shown only when standard error is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ProgressCallback = Callable[[int, dict[str, float]], None]


class StageProgress:
    """One rich progress bar per stage (encoder epochs, DQN flows, PPO flows); silent when disabled."""

    def __init__(self, progress: Any | None) -> None:
        self._progress = progress

    def stage(self, description: str, total: float) -> ProgressCallback | None:
        """Return a callback advancing a new bar to the step it is given, or None when disabled."""
        if self._progress is None:
            return None
        task = self._progress.add_task(description, total=total)

        def update(step: int, metrics: dict[str, float]) -> None:
            shown = {k.split("/")[-1]: v for k, v in metrics.items() if "f1" in k or "reward" in k}
            suffix = "  ".join(f"{k} {v:.3f}" for k, v in shown.items())
            self._progress.update(task, completed=min(step, total), description=f"{description} {suffix}".strip())

        return update


@contextmanager
def stage_progress(enabled: bool | None = None) -> Iterator[StageProgress]:
    """Yield a StageProgress; ``enabled=None`` shows bars only when standard error is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield StageProgress(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as progress:
        yield StageProgress(progress)
