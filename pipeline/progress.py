"""Progress for long stages: per-step log lines with elapsed time, tqdm bars over items."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
_STARTED = time.monotonic()


def log(message: str) -> None:
    """One line on stderr, prefixed with the seconds since the process started."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def bar(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A progress bar with throughput; quiet when stderr is not a terminal except for the end."""
    yield from tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr,
                    mininterval=1.0, dynamic_ncols=True)
