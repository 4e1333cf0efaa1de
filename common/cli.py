"""Entry-point guard: bad input ends in one line and exit code 2, never in a traceback.

    if __name__ == "__main__":
        entry(main)

``main(argv)`` runs with the command-line arguments. Errors a user can fix -- a bad config value or path
(:class:`~common.config.UserInputError`), a malformed record, an unusable checkpoint, a missing file, a model that is
neither a local folder nor cached -- print ``error: <one line>`` on stderr and exit with code 2. Anything else is a
bug and keeps its traceback. ``--debug`` (or ``DISTILL_DEBUG=1``) shows the traceback of every error.
"""

from __future__ import annotations

import os
import sys

from common.config import UserInputError


def _expected() -> tuple[type[BaseException], ...]:
    from common.checkpoint import CheckpointError
    from common.results import RecordError

    kinds: list[type[BaseException]] = [
        UserInputError,
        RecordError,
        CheckpointError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        FloatingPointError,
        UnicodeDecodeError,
    ]
    try:  # a model id that is neither a folder nor in the cache, or a Hub that cannot be reached
        from huggingface_hub import errors as hub

        kinds += [hub.LocalEntryNotFoundError, hub.RepositoryNotFoundError, hub.OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    return tuple(kinds)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)) and e.filename:
        text = f"{e.filename}: {e.strerror or text}"
    return text if len(text) <= 400 else text[:397] + "..."


def debug_requested() -> bool:
    return os.environ.get("DISTILL_DEBUG", "") not in ("", "0")


def entry(main, argv: list[str] | None = None):
    """Run ``main(argv)`` as a command (see the module docstring); returns what main returns."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # every parser downstream sees the request through the environment
        argv.remove("--debug")
        os.environ["DISTILL_DEBUG"] = "1"
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except _expected() as e:
        if debug_requested():
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
