"""Privacy benchmarks: certificate-check latency (RDP target <= 50 ms) and the accuracy/epsilon table.

    python benchmarks/privacy.py [--repeats 30] [--skip-training]

Baselines measured side by side in the same run: Opacus's accountant called directly in-process
(what ``check_certificate`` adds on top: parsing, the checks, and for PRV the guarded worker
process), and ``DPStatistics`` with a cold versus a warm calibration cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
import warnings
from pathlib import Path

RDP_TARGET_MS = 50.0
VECTORS = [((1.3, 0.004, 3750), "sigma=1.3 q=0.004 T=3750"), ((1.0, 0.01, 1000), "sigma=1.0 q=0.01 T=1000")]


def _timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def _cert(accountant: str, segment: tuple[float, float, int]):
    from sealinfer.privacy import Certificate, sha256_hex

    s, q, t = segment
    return Certificate.from_json({
        "accountant": accountant, "delta": 1e-5, "dataset_size": 60000, "sampling": "poisson",
        "segments": [{"noise_multiplier": s, "sample_rate": q, "steps": t}], "max_grad_norm": 1.0,
        "secure_mode": False, "model_sha256": sha256_hex(b"model"),
    })


def bench_checks(repeats: int) -> None:
    from opacus.accountants import create_accountant

    from sealinfer.privacy import check_certificate

    def raw(accountant: str, segment: tuple[float, float, int]) -> float:
        acc = create_accountant(accountant)
        acc.history = [segment]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return acc.get_epsilon(delta=1e-5)

    print(f"certificate checks (median / p90 of {repeats} runs after one warm-up, ms)")
    print(f"{'accountant':<10} {'vector':<28} {'epsilon':>8} {'check_certificate':>20} {'raw opacus':>16}  target")
    for accountant in ("rdp", "prv"):
        for segment, label in VECTORS:
            cert = _cert(accountant, segment)
            eps = check_certificate(cert, 100.0).epsilon  # warm-up (imports)
            raw(accountant, segment)
            n = repeats if accountant == "rdp" else max(5, repeats // 3)
            med, p90 = _timed(lambda c=cert: check_certificate(c, 100.0), n)
            rmed, rp90 = _timed(lambda a=accountant, s=segment: raw(a, s), n)
            target = f"<= {RDP_TARGET_MS:g} ms {'OK' if med <= RDP_TARGET_MS else 'MISSED'}" if accountant == "rdp" \
                else "(time limit 10 s)"
            print(f"{accountant:<10} {label:<28} {eps:>8.3f} {med:>9.1f} / {p90:>7.1f} {rmed:>7.1f} / {rp90:>6.1f}  "
                  f"{target}")


def bench_stats(repeats: int) -> None:
    import numpy as np

    from sealinfer.privacy import BudgetLedger, DPStatistics
    from sealinfer.privacy import stats as stats_module

    values = np.random.default_rng(0).uniform(size=1000)
    with tempfile.TemporaryDirectory() as tmp, BudgetLedger(Path(tmp) / "ledger.db") as ledger:
        ledger.set_budget("bench", 1e9)
        dps = DPStatistics(ledger, "bench")

        def cold() -> None:
            stats_module._CALIBRATED.clear()
            dps.mean(values, bounds=(0, 1), epsilon=0.5)

        cmed, _ = _timed(cold, max(5, repeats // 3))
        wmed, wp90 = _timed(lambda: dps.mean(values, bounds=(0, 1), epsilon=0.5), repeats)
    print(f"\nDP mean release over 1,000 values incl. ledger charge (ms): warm calibration {wmed:.1f} "
          f"(p90 {wp90:.1f}); cold calibration (baseline) {cmed:.1f}")


def bench_training() -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "dp_breast_cancer.py"
    spec = importlib.util.spec_from_file_location("dp_breast_cancer", path)
    example = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(example)
    print("\naccuracy vs epsilon, breast cancer (455 train / 114 test rows), examples/dp_breast_cancer.py")
    with tempfile.TemporaryDirectory() as tmp:
        example.print_table(example.run(Path(tmp)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    bench_checks(args.repeats)
    bench_stats(args.repeats)
    if not args.skip_training:
        bench_training()


if __name__ == "__main__":
    main()
