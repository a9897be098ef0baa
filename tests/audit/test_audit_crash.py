"""A writer killed with SIGKILL at random points loses no acknowledged record; the chain still verifies."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sealinfer.runtime.audit.journal import read_acked
from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.audit.verify import verify_log

from .conftest import SEED_KEY, make_signer, trust_for

CHILD = r"""
import sys, threading
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.keys.signing import Signer
from sealinfer.tests.audit.conftest import make_event
signer = Signer("audit-test-1", Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[2])))
log = AuditLog(sys.argv[1], signer=signer, durability=sys.argv[3], checkpoint_every=25, checkpoint_seconds=0.05)
out = sys.stdout
lock = threading.Lock()
print("ready", flush=True)
def work(t):
    i = 0
    while True:
        r = log.append(make_event(t * 100000 + i))
        with lock:  # acknowledged: append returned, so it is durable
            out.write(f"{r.seq}\n")
            out.flush()
        i += 1
threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(3)]
for t in threads:
    t.start()
threading.Event().wait()
"""


def crash_loop(path: Path, iterations: int, seed: int, durability: str = "process") -> int:
    """Run and SIGKILL a writer ``iterations`` times; returns the number of acknowledged records."""
    rng = random.Random(seed)
    acked: set[int] = set()
    for _ in range(iterations):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), SEED_KEY.hex(), durability],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        lines = out.split("\n")
        acked.update(int(x) for x in lines[:-1])  # the last piece may be a cut line: not acknowledged
        assert child.returncode == -signal.SIGKILL
        # Before anyone reopens the log, every acknowledged record is in the database or its journal ...
        conn = sqlite3.connect(path)
        present = {r[0] for r in conn.execute("SELECT seq FROM audit_events")}
        conn.close()
        journaled = {seq for seq, _, _ in read_acked(path)}
        lost = acked - present - journaled
        assert not lost, f"acknowledged records lost after SIGKILL: {sorted(lost)[:10]}"
        # ... and opening it for writing, as a restarted runtime does, moves them all into the database.
        AuditLog(path, signer=make_signer(), durability=durability).close()
        conn = sqlite3.connect(path)
        present = {r[0] for r in conn.execute("SELECT seq FROM audit_events")}
        conn.close()
        assert not acked - present, f"acknowledged records not recovered: {sorted(acked - present)[:10]}"
        assert not list(read_acked(path)), "the journal was not emptied after recovery"
        result = verify_log(path, trust_for(make_signer()))
        assert result.ok, result.problem
    return len(acked)


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    acked = crash_loop(tmp_path / "audit.db", 20, seed=1234)
    assert acked > 0
