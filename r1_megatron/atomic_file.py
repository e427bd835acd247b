"""Replace a small text file so that a reader sees either the old or the new content, never a partial one."""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temp file beside `path`, flush it to disk, then rename it over `path`.

    The temp name is unique per host, process and call, so ranks writing the same file at once (on one node or
    on nodes sharing a disk) never write into each other's temp file; the rename makes a crash leave the old file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
