"""SIGKILL in the middle of loading (and running) loses no acknowledged audit record."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.audit.verify import verify_log
from sealinfer.tests.policy.secure_fixtures import Sealed

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sealinfer.runtime import Caller, Runtime
    from sealinfer.runtime.keys.keyring import Keyring
    rt = Runtime(Keyring.open(sys.argv[1], "pw"), "hipaa", audit_db=sys.argv[3], devices=sys.argv[4])
    svc = Caller("svc-ward7", "service", "treatment")
    doc = Caller("dr.grey", "clinician", "treatment")
    x = np.ones((1, 30), np.float32)
    loads = runs = 0
    while True:
        session = rt.load(sys.argv[2], caller=svc)   # audited; returns once its record is durable
        loads += 1
        print("L", loads, flush=True)
        for _ in range(3):
            session.run({"input": x}, caller=doc)
            runs += 1
            print("R", runs, flush=True)
        session.close()
    """
)


def _counts(db: Path, sealed: Sealed) -> tuple[int, int]:
    if not db.exists():
        return 0, 0
    # Opening the log for writing, as the restarted runtime does, stores what the crash left in its journal.
    AuditLog(db, signer=sealed.keyring.signer()).close()
    with sqlite3.connect(db) as conn:
        q = "SELECT count(*) FROM audit_events WHERE action = ? AND outcome = 'ok'"
        return conn.execute(q, ["load"]).fetchone()[0], conn.execute(q, ["infer"]).fetchone()[0]


def test_sigkill_mid_load_loses_no_acknowledged_audit_record(tmp_path: Path, sealed: Sealed):
    rng = random.Random(1234)
    db = tmp_path / "audit.db"
    for attempt in range(5):
        loads_before, runs_before = _counts(db, sealed)
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(sealed.keyring.path), str(sealed.hipaa), str(db), str(sealed.devices)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # wait until it is really working
        assert first.startswith("L"), first
        time.sleep(rng.uniform(0.0, 0.4))  # land anywhere in a load or a run
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lines = [first, *proc.stdout.read().splitlines()]
        acked = {k: max((int(x.split()[1]) for x in lines if x.startswith(k)), default=0) for k in "LR"}
        loads, runs = _counts(db, sealed)
        assert loads - loads_before >= acked["L"], f"attempt {attempt}: lost an acknowledged load record"
        assert runs - runs_before >= acked["R"], f"attempt {attempt}: lost an acknowledged inference record"
        result = verify_log(db, sealed.keyring.trust_store())
        assert result.ok, result.problem
