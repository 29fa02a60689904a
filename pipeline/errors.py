"""One error policy for every entry point: bad input exits 2, a bug exits 1, one sentence each."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable


class BadInput(Exception):
    """The user's config, files or arguments are wrong; the message says what to change."""


# A full disk or quota is the machine's state, not a bug: the user frees space and reruns.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _one_sentence(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def run(main: Callable[[], object]) -> None:
    """Run an entry point; turn exceptions into an exit status and one line on stderr."""
    try:
        result = main()
    except BadInput as error:
        if os.environ.get("EDGERAG_DEBUG") == "1":
            raise
        print(f"edgerag: {_one_sentence(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("edgerag: interrupted.", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the boundary where every bug becomes exit 1
        if os.environ.get("EDGERAG_DEBUG") == "1":
            raise
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            where = f" writing {error.filename}" if error.filename else ""
            print(f"edgerag: no space left on the device{where}; free some space and run again.",
                  file=sys.stderr)
            sys.exit(2)
        print(
            f"edgerag: internal error ({type(error).__name__}): {_one_sentence(error)} "
            "(set EDGERAG_DEBUG=1 for the traceback).",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
