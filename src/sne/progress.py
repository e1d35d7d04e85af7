"""Progress of long work: rich's bar on a terminal, plain lines anywhere else (a log file, a pipe)."""

from __future__ import annotations

import math
import time

from rich import progress as rich_progress
from rich.console import Console

#: Seconds between two plain lines of one task (a task's last step is always written).
PLAIN_INTERVAL = 10.0


class Progress(rich_progress.Progress):
    """:class:`rich.progress.Progress` that, when its console is not a terminal, writes a plain line
    to standard error as its tasks move: at most one per ``interval`` seconds per task, and one when
    a task completes. A bar that no one sees would otherwise leave a log silent for minutes."""

    def __init__(self, *columns, interval: float = PLAIN_INTERVAL, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self._plain = not kwargs.get("disable", False) and not self.console.is_terminal
        self._interval = interval
        self._written: dict[rich_progress.TaskID, float] = {}
        self._log = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False) if self._plain else None

    def update(self, task_id: rich_progress.TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._write(task_id)

    def advance(self, task_id: rich_progress.TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._write(task_id)

    def _write(self, task_id: rich_progress.TaskID) -> None:
        if not self._plain:
            return
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is None or not task.visible:
            return
        now = time.monotonic()
        finished = task.total is not None and task.completed >= task.total
        if not finished and now - self._written.get(task_id, -math.inf) < self._interval:
            return
        self._written[task_id] = now
        total = f"/{task.total:g}" if task.total is not None else ""
        self._log.print(f"{task.description}: {task.completed:g}{total} ({task.elapsed or 0:.0f} s)", markup=False)
