"""Sealed load vs plain onnxruntime vs a naive encrypted load, on a ~300 MB model.

    python benchmarks/load.py [--mb 300] [--runs 5]

Prints medians of --runs interleaved runs (every approach in turn, so drift hits all alike), sealing
throughput, and the peak RSS of each approach, each measured in a fresh process because a process's
peak RSS only ever grows. Targets (issue 2): sealed load <= 1.10x plain; sealing >= 200 MB/s;
sealed-load peak RSS <= 1.25x plain.

Two pairs are compared like for like. By default onnxruntime "prepacks" MatMul/Gemm weights into a
second, GEMM-friendly copy; from a file it then drops the original, but weights handed over in memory
stay with their owner, so a sealed session with prepacking holds the weights twice. With
``session.disable_prepacking`` both hold them once ("lean" rows: sealinfer's ``prepack=False``).

The naive approach is what a team might write first: Fernet-encrypt the whole .onnx file, then
decrypt it into memory and hand onnxruntime the bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import onnxruntime as ort
from cryptography.fernet import Fernet

from sealinfer.runtime import Runtime, SealOptions, seal_model
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.tests import models

PASS = "benchmark passphrase"


def load_plain(path: Path, prepack: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


MODES = ("plain", "sealed", "naive", "plain-lean", "sealed-lean")
BARE = "plain-bare"  # peak RSS only: a plain load in a process that did nothing else first
LABELS = {
    "plain": "plain InferenceSession(path)",
    "sealed": "sealinfer Runtime.load",
    "naive": "naive Fernet + from bytes",
    "plain-lean": "plain, no prepacking",
    "sealed-lean": "sealinfer, prepack=False",
}


def load_once(mode: str, work: Path, rt: Runtime, fkey: bytes, x: np.ndarray) -> None:
    """Load the model the way ``mode`` says and run it once (onnxruntime finishes some work lazily)."""
    if mode.startswith("plain"):
        load_plain(work / "model.onnx", prepack=mode == "plain").run(None, {"input": x})
    elif mode.startswith("sealed"):
        with rt.load(work / "model.sealed", prepack=mode == "sealed") as session:
            session.run({"input": x})
    else:
        load_naive(work / "model.fernet", fkey).run(None, {"input": x})


def load_naive(path: Path, key: bytes) -> ort.InferenceSession:
    plaintext = Fernet(key).decrypt(path.read_bytes())
    return ort.InferenceSession(plaintext, providers=["CPUExecutionProvider"])


def _child(mode: str, work: Path) -> None:
    """Measure one load in this fresh process and print its peak RSS increase (MB)."""
    x = np.ones((1, 1024), np.float32)
    if mode == BARE:  # nothing before the load: see the note printed under the table
        Path("/proc/self/clear_refs").write_text("5")
        load_plain(work / "model.onnx").run(None, {"input": x})
        print(json.dumps({"peak_rss_mb": _status_kb("VmHWM") / 1024}))
        return
    rt = Runtime(Keyring.open(work / "kr", PASS))
    fkey = (work / "fernet.key").read_bytes()
    # ru_maxrss survives fork+exec on Linux (it would report the parent's peak), so reset this process's
    # high-water mark and read VmHWM instead.
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    load_once(mode, work, rt, fkey, x)
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_rss_mb": peak / 1024, "delta_mb": (peak - base) / 1024}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=300, help="model size in MB (default 300)")
    ap.add_argument("--runs", type=int, default=5, help="runs per approach (default 5)")
    ap.add_argument("--child", choices=(*MODES, BARE), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.work)
        return

    with tempfile.TemporaryDirectory(prefix="sealinfer-bench-") as tmp:
        work = Path(tmp)
        model = models.wide_model(args.mb << 20)
        path = models.save(model, work / "model.onnx")
        size_mb = path.stat().st_size / 1e6
        del model
        ring = Keyring.create(work / "kr", PASS)
        fkey = Fernet.generate_key()
        (work / "fernet.key").write_bytes(fkey)

        seal_times, fernet_times = [], []
        for _ in range(3):
            t = time.perf_counter()
            seal_model(path, work / "model.sealed", keyring=ring, options=SealOptions(name="bench"))
            seal_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            (work / "model.fernet").write_bytes(Fernet(fkey).encrypt(path.read_bytes()))
            fernet_times.append(time.perf_counter() - t)

        rt = Runtime(ring)
        x = np.ones((1, 1024), np.float32)
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for mode in MODES:  # warm the page cache for every file, then interleave
            load_once(mode, work, rt, fkey, x)
        for _ in range(args.runs):
            for mode in MODES:
                t = time.perf_counter()
                load_once(mode, work, rt, fkey, x)
                times[mode].append(time.perf_counter() - t)

        rss = {}
        for mode in (*MODES, BARE):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--work", str(work)],
                capture_output=True,
                text=True,
                check=True,
            )
            rss[mode] = json.loads(out.stdout.strip().splitlines()[-1])

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {size_mb:.0f} MB of weights, {args.runs} interleaved runs each (load + first run)")
    print(f"{'approach':28} {'median load s':>14} {'vs plain':>9} {'peak RSS MB':>12} {'vs plain':>9}")
    for mode in MODES:
        ref = "plain-lean" if mode.endswith("lean") else "plain"
        print(
            f"{LABELS[mode]:28} {med[mode]:14.3f} {med[mode] / med[ref]:8.2f}x "
            f"{rss[mode]['peak_rss_mb']:12.0f} {rss[mode]['peak_rss_mb'] / rss[ref]['peak_rss_mb']:8.2f}x"
        )
    print(
        f"note: a plain load's peak varies with the state of glibc's heap before it (freed originals are kept "
        f"or returned): {rss['plain']['peak_rss_mb']:.0f} MB above, after opening a keyring as a service does; "
        f"{rss[BARE]['peak_rss_mb']:.0f} MB in a process that did nothing else first. A sealed load's does not "
        f"vary: onnxruntime cannot free the decrypted originals it was lent."
    )
    seal_s = statistics.median(seal_times)
    print(
        f"sealing: {size_mb / seal_s:.0f} MB/s (median of 3, {seal_s:.2f} s; includes hashing, signing, fsync)"
        f"   naive Fernet encrypt: {size_mb / statistics.median(fernet_times):.0f} MB/s"
    )
    print(
        f"targets: sealed/plain load <= 1.10 -> {med['sealed'] / med['plain']:.2f}; sealing >= 200 MB/s -> "
        f"{size_mb / seal_s:.0f}; sealed/plain peak RSS <= 1.25 -> "
        f"{rss['sealed']['peak_rss_mb'] / rss['plain']['peak_rss_mb']:.2f} "
        f"(lean vs lean: load {med['sealed-lean'] / med['plain-lean']:.2f}, "
        f"RSS {rss['sealed-lean']['peak_rss_mb'] / rss['plain-lean']['peak_rss_mb']:.2f})"
    )


if __name__ == "__main__":
    main()
