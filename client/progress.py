"""Progress on a terminal: files, bytes, rate and ETA. The totals come from a
counting walk that runs beside the backup, so the first bytes move at once."""
import os
import sys
import threading


class TerminalProgress:
    def __init__(self, label: str, roots: list[str] | None = None, total_bytes: int | None = None):
        from rich.console import Console   # here: a run with --json or without a terminal never needs rich
        from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
        from rich.text import Text
        self.console = Console(stderr=True)
        self.files = 0

        class FilesColumn(ProgressColumn):
            """The count as it is at each refresh: entry() only adds one."""
            def render(column, task):
                return Text(f"{self.files} files")
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            FilesColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self._task = self._progress.add_task(label, total=total_bytes)
        self._stop = threading.Event()
        self._counter = None
        if roots:
            self._counter = threading.Thread(target=self._count, args=(roots,), daemon=True)

    def _count(self, roots):
        total = 0
        stack = list(roots)
        while stack and not self._stop.is_set():
            path = stack.pop()
            try:
                with os.scandir(path) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
        if not self._stop.is_set():
            self._progress.update(self._task, total=total)

    def __enter__(self):
        self._progress.start()
        if self._counter:
            self._counter.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._progress.stop()

    def entry(self) -> None:
        self.files += 1

    def bytes(self, n: int) -> None:
        self._progress.advance(self._task, n)


def maybe_progress(enabled: bool, label: str, **kw):
    """A TerminalProgress when stderr is a terminal and output is for people, else None."""
    if enabled and sys.stderr.isatty():
        return TerminalProgress(label, **kw)
    return None
