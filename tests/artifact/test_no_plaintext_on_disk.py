"""No plaintext leaves memory: not while sealing, not while loading, not in the artifact itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from sealinfer.runtime import SealOptions, seal_model
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.tests import models

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sealinfer.runtime import Runtime, seal_model
    from sealinfer.runtime.keys.keyring import Keyring
    ring = Keyring.open(sys.argv[1], "pw")
    seal_model(sys.argv[2], sys.argv[3], keyring=ring)
    out = Runtime(ring).load(sys.argv[3]).run({"input": np.ones((4, 30), np.float32)})
    print("OK", out["probabilities"].shape)
    """
)
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")


def _windows(data: bytes, size: int = 32) -> set[bytes]:
    return {data[i : i + size] for i in range(len(data) - size + 1)}


def test_sealing_and_loading_write_nothing_but_the_artifact(tmp_path: Path):
    assert shutil.which("strace"), "strace is missing: run `bash scripts/setup.sh` (installs it)"
    ring_dir, watched = tmp_path / "kr", tmp_path / "watched-tmp"
    watched.mkdir()
    Keyring.create(ring_dir, "pw", scrypt_n=2**10)
    src = models.save(models.mlp(30, 128, 2, seed=7), tmp_path / "model.onnx")
    out = tmp_path / "out" / "model.sealed"
    out.parent.mkdir()
    trace = tmp_path / "strace.log"
    env = {
        **os.environ,
        "TMPDIR": str(watched),
        "TEMP": str(watched),
        "TMP": str(watched),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2,creat,rename,renameat,renameat2,link,symlink",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            SCRIPT,
            str(ring_dir),
            str(src),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK (4, 2)" in proc.stdout
    assert list(watched.iterdir()) == [], "nothing may be written to TMPDIR"
    written = set()
    for line in trace.read_text().splitlines():
        m = re.search(r'(?:open|openat|openat2|creat)\((?:[^,]+, )?"([^"]+)", ([^)]*)\)', line)
        if m and (_WRITE_FLAGS.search(m.group(2)) or "creat(" in line) and "ENOENT" not in line:
            written.add(m.group(1))
    allowed = {"/dev/null", "/dev/tty"}
    unexpected = {
        p
        for p in written
        if p not in allowed
        and not p.startswith(str(out.parent))
        and not p.startswith(("/proc/", "/sys/", "/dev/shm/sem"))
    }
    assert not unexpected, f"files opened for writing outside the output folder: {sorted(unexpected)}"
    assert any(p.startswith(str(out.parent)) for p in written), "the trace must see the artifact being written"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.sealed"]  # no leftover partial file


def test_no_32_byte_window_of_any_initializer_appears_in_the_artifact(tmp_path: Path):
    ring = Keyring.create(tmp_path / "kr", "pw", scrypt_n=2**10)
    model = models.mlp(30, 128, 2, seed=11)
    src = models.save(model, tmp_path / "m.onnx")
    seal_model(src, tmp_path / "m.sealed", keyring=ring, options=SealOptions(name="leakcheck"))
    sealed = _windows((tmp_path / "m.sealed").read_bytes())
    for init in onnx.load(str(src)).graph.initializer:
        data = numpy_helper.to_array(init).tobytes()
        if len(data) < 32:
            continue
        assert not (_windows(data) & sealed), f"plaintext of {init.name} found in the artifact"
    # and the check itself can fail: the unsealed file of course contains them
    assert _windows(np.asarray(numpy_helper.to_array(model.graph.initializer[0])).tobytes()) & _windows(
        src.read_bytes()
    )
