"""Progress bars for long work (sealing, verifying), silent unless asked for."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Null:
    def update(self, n: int) -> None:
        pass


@contextmanager
def progress_bar(total: int, label: str, *, enabled: bool) -> Iterator[Any]:
    """A tqdm byte counter on stderr when ``enabled`` and stderr is a terminal or forced on."""
    if not enabled:
        yield _Null()
        return
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no background monitor thread: our bars are updated from the work loop
    with tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        yield bar
