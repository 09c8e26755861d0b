"""Progress bars for long work: tqdm with ETA, silenced by ``progress=False`` or ``TQDM_DISABLE=1`` (CI)."""

import os
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Any = None, *, enabled: bool, **kwargs: Any) -> tqdm:
    quiet = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(iterable, disable=quiet or not enabled, **kwargs)
