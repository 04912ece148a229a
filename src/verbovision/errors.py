"""Errors a user can act on: each names the file, record or key at fault and says why."""

import os
import sys
from pathlib import Path

RANK_ERRORS = "VERBO_RANK_ERRORS"
"""Set by `train.distributed.launch` for the processes it starts: a folder where each leaves the error it stopped
with, for the launcher to show each different one once (every process of a run meets the same bad input)."""


class VerboError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ConfigError(VerboError):
    """A recipe, override or build option is invalid."""


class DataError(VerboError):
    """A data file or record cannot be used."""


def show_error(error: VerboError) -> None:
    """`error` as the one line users see, on stderr; in a process that `train.distributed.launch` started, left for
    the launcher instead."""
    folder = os.environ.get(RANK_ERRORS)
    if folder:
        (Path(folder) / f"rank-{int(os.environ.get('RANK', 0)):05d}").write_text(str(error), encoding="utf-8")
    else:
        print(f"verbo: error: {error}", file=sys.stderr)
