"""How a file is named in tables, columns and figures: its stem without the prefix it shares with
the other files of the run (``ckpt_epoch10.h5`` → ``epoch10``), the same in every command and the report."""

from __future__ import annotations

import os
from pathlib import Path


def file_labels(paths: list[str]) -> list[str]:
    """Each path's stem without the stems' shared prefix up to a separator (_ - .); one file keeps its stem.

    >>> file_labels(["run/ckpt_epoch0.h5", "run/ckpt_epoch10.h5"])
    ['epoch0', 'epoch10']
    """
    stems = [Path(path).stem for path in paths]
    if len(stems) < 2:
        return stems
    prefix = os.path.commonprefix(stems)
    cut = max(prefix.rfind("_"), prefix.rfind("-"), prefix.rfind("."))
    return [stem[cut + 1:] or stem for stem in stems] if cut >= 0 else stems
