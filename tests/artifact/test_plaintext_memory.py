"""Where decrypted model bytes live: anonymous memory that a core dump leaves out."""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import pytest

from sealinfer.runtime.loader import plaintext_buffer


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTDUMP"), reason="MADV_DONTDUMP is Linux-only")
def test_plaintext_buffers_are_excluded_from_core_dumps() -> None:
    buf = plaintext_buffer(8 << 20)
    buf[:] = 1  # touch it so the mapping is real
    start = buf.ctypes.data
    smaps = Path("/proc/self/smaps").read_text()
    blocks = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps)
    mine = [b for b in blocks if int(b.split("-", 1)[0], 16) <= start < int(b.split("-", 1)[1].split()[0], 16)]
    assert len(mine) == 1
    flags = re.search(r"VmFlags:(.*)", mine[0])
    assert flags is not None and " dd" in flags.group(1)  # dd = do not include in core dump


def test_plaintext_buffers_are_page_aligned_and_writable() -> None:
    buf = plaintext_buffer(12345)
    assert buf.size == 12345 and buf.flags.writeable and buf.ctypes.data % 4096 == 0
    assert plaintext_buffer(0).size == 0
