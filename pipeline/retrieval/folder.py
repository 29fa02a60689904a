"""The files of a corpus folder worth reading, and every other entry with the reason it is not.

Nothing is passed over silently: a file whose name is not UTF-8 (the tokenizer and the JSON
records take text), a link that leads outside `corpus.path` (the build reads what the folder
holds, not what it points at), a link to a file or folder inside it (read once, at its own
path), a FIFO (opening it would block), a device or a socket each get a reason. Files of other
formats are counted by suffix.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Listing:
    files: list[tuple[str, Path]] = field(default_factory=list)  # (source, path) to read
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    other: Counter = field(default_factory=Counter)  # files of formats not read, by suffix


def printable(source: str) -> str:
    """`source` as valid text: bytes that are not UTF-8 shown as `\\xe9`."""
    return os.fsencode(source).decode("utf-8", "backslashreplace")


def _is_utf8(source: str) -> bool:
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogates for bytes that are not UTF-8
        return False
    return True


def _special(mode: int) -> str:
    return ("fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not-a-file")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _link_reason(path: Path, root: Path, suffixes: tuple[str, ...]) -> str:
    """Why a link is not read, or "" when it is read under its own name (a link inside the
    folder to a file of a format the walk does not read at its own path)."""
    target = Path(os.path.realpath(path))
    if not target.exists():
        return "broken-link"
    if not _inside(target, root):
        return "outside-corpus.path"
    return "duplicate-link" if target.is_dir() or target.suffix.lower() in suffixes else ""


def list_folder(root: Path, suffixes: tuple[str, ...]) -> Listing:
    """Every entry under `root` (links not followed), in path order."""
    root = Path(os.path.realpath(root))
    listing = Listing()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                source = (here / name).relative_to(root).as_posix()
                listing.skipped.append((printable(source),
                                        _link_reason(here / name, root, suffixes)))
        for name in sorted(filenames):
            path = here / name
            source = path.relative_to(root).as_posix()
            if not _is_utf8(source):
                listing.skipped.append((printable(source), "name-not-utf8"))
                continue
            if path.is_symlink() and (reason := _link_reason(path, root, suffixes)):
                listing.skipped.append((source, reason))
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError:
                listing.skipped.append((source, "unreadable"))
                continue
            if not stat.S_ISREG(mode):
                listing.skipped.append((source, _special(mode)))
            elif path.suffix.lower() in suffixes:
                listing.files.append((source, path))
            else:
                listing.other[path.suffix.lower() or "(no suffix)"] += 1
    listing.files.sort(key=lambda file: file[1])  # Path order: a folder's files before "b.md"
    return listing
