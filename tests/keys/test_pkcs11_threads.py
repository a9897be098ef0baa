"""PKCS#11 provider under concurrent use: 8 threads x 50 wrap/unwrap round trips."""

from __future__ import annotations

import random
import threading

import pytest

from sealinfer.runtime.keys.pkcs11 import Pkcs11Provider
from sealinfer.tests.softhsm import SoftHsm

pytestmark = pytest.mark.hsm

THREADS = 8
ROUNDS = 50


def test_threads_wrap_and_unwrap_concurrently(softhsm: SoftHsm) -> None:
    token_a, token_b = softhsm.fresh_token("thr"), softhsm.fresh_token("thr")
    shared = token_a.provider()  # used by half the threads at once
    own_a, own_b = token_a.provider(), token_b.provider()  # same token logged in twice; another token
    kek_a = shared.generate_kek()
    kek_a2 = own_a.generate_kek()
    kek_b = own_b.generate_kek()
    plan: list[tuple[Pkcs11Provider, str]] = [
        (shared, kek_a), (shared, kek_a2), (shared, kek_a), (shared, kek_a2),
        (own_a, kek_a), (own_a, kek_a2), (own_b, kek_b), (own_b, kek_b),
    ]
    barrier = threading.Barrier(THREADS)
    failures: list[BaseException] = []
    done = [0] * THREADS

    def work(index: int) -> None:
        provider, kek_id = plan[index]
        rng = random.Random(index)
        try:
            barrier.wait(timeout=30)
            for _ in range(ROUNDS):
                dek = rng.randbytes(32)
                wrapped = provider.wrap_data_key(kek_id, dek)
                assert len(wrapped.wrapped) == 40
                assert provider.unwrap_data_key(wrapped) == dek
                done[index] += 1
        except BaseException as exc:  # reported by the main thread, below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,), name=f"hsm-{i}") for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert done == [ROUNDS] * THREADS
    # Each KEK wrapped only under itself: a key wrapped under token A's KEK does not open in token B.
    assert own_b.list_keks() == [kek_b]
    for provider in (shared, own_a, own_b):
        provider.close()
