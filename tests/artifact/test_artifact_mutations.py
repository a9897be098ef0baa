"""Every mutation of a sealed artifact is rejected with a typed error, and no plaintext comes out.

Over 1,000 mutations per run: bit flips anywhere, truncation at any offset, appended bytes, payload
segments swapped or spliced in from another artifact, and header edits re-encoded canonically (so
they get past parsing and exercise the signature, key and payload checks behind it).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealinfer.runtime import Runtime, SealOptions, seal_model
from sealinfer.runtime.artifact import PRELUDE, SealedArtifact, canonical_json
from sealinfer.runtime.errors import ArtifactError, KeyError_, SealinferError
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.stream import TAG_BYTES
from sealinfer.tests import models

SEGMENT = 1024
PROFILE = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Corpus:
    def __init__(self, tmp: Path, keyring: Keyring) -> None:
        model_path = models.save(models.mlp(30, 96, 2), tmp / "m.onnx")  # ~13 KB of weights
        opts = SealOptions(segment_size=SEGMENT, name="mutant")
        self.path = tmp / "a.sealed"
        self.other_path = tmp / "b.sealed"
        seal_model(model_path, self.path, keyring=keyring, options=opts)
        seal_model(model_path, self.other_path, keyring=keyring, options=opts)  # same model, fresh keys
        self.data = self.path.read_bytes()
        self.other = self.other_path.read_bytes()
        self.art = SealedArtifact.open(self.path)
        self.other_art = SealedArtifact.open(self.other_path)
        self.runtime = Runtime(keyring)
        self.scratch = tmp / "mutant.sealed"
        self.x = np.zeros((1, 30), np.float32)
        self.count = 0

    def segments(self, art: SealedArtifact) -> list[tuple[int, int]]:
        pos, out = art.payload_offset, []
        for i in range(art.payload.segment_count):
            last = i == art.payload.segment_count - 1
            n = (art.payload.plaintext_size - i * SEGMENT if last else SEGMENT) + TAG_BYTES
            out.append((pos, n))
            pos += n
        return out

    def assert_rejected(self, mutated: bytes) -> SealinferError:
        assert mutated != self.data
        self.count += 1
        self.scratch.write_bytes(mutated)
        with pytest.raises(SealinferError) as info:
            session = self.runtime.load(self.scratch)
            session.run({"input": self.x})  # unreachable if the load was rejected
        exc = info.value
        assert isinstance(exc, ArtifactError | KeyError_), f"{type(exc).__name__}: {exc}"
        assert type(exc) not in (SealinferError, ArtifactError), "errors must be specific"
        assert str(exc) and exc.hint, "every error says what to do"
        return exc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, module_keyring: Keyring) -> Corpus:
    c = Corpus(tmp_path_factory.mktemp("mutations"), module_keyring)
    assert c.art.payload.segment_count >= 10
    return c


def test_unmutated_artifact_loads(corpus: Corpus):
    out = corpus.runtime.load(corpus.path).run({"input": corpus.x})
    assert out["probabilities"].shape == (1, 2)


@settings(PROFILE, max_examples=600)
@given(data=st.data())
def test_any_single_bit_flip_is_rejected(corpus: Corpus, data: st.DataObject):
    # Half the flips land in the header (small, dense with meaning), half anywhere.
    header_end = corpus.art.payload_offset
    where = data.draw(st.one_of(st.integers(0, header_end - 1), st.integers(0, len(corpus.data) - 1)))
    bit = data.draw(st.integers(0, 7))
    mutated = bytearray(corpus.data)
    mutated[where] ^= 1 << bit
    corpus.assert_rejected(bytes(mutated))


@settings(PROFILE, max_examples=200)
@given(length=st.integers(min_value=0))
def test_truncation_at_any_offset_is_rejected(corpus: Corpus, length: int):
    corpus.assert_rejected(corpus.data[: length % len(corpus.data)])


@settings(PROFILE, max_examples=50)
@given(extra=st.binary(min_size=1, max_size=2048))
def test_appended_bytes_are_rejected(corpus: Corpus, extra: bytes):
    corpus.assert_rejected(corpus.data + extra)


@settings(PROFILE, max_examples=100)
@given(data=st.data())
def test_swapped_segments_are_rejected(corpus: Corpus, data: st.DataObject):
    segs = corpus.segments(corpus.art)[:-1]  # full-size segments can be swapped without resizing
    i = data.draw(st.integers(0, len(segs) - 1))
    j = data.draw(st.integers(0, len(segs) - 1).filter(lambda k: k != i))
    (a, n), (b, _) = segs[i], segs[j]
    mutated = bytearray(corpus.data)
    mutated[a : a + n], mutated[b : b + n] = corpus.data[b : b + n], corpus.data[a : a + n]
    corpus.assert_rejected(bytes(mutated))


@settings(PROFILE, max_examples=100)
@given(data=st.data())
def test_segments_spliced_from_another_artifact_are_rejected(corpus: Corpus, data: st.DataObject):
    mine, theirs = corpus.segments(corpus.art), corpus.segments(corpus.other_art)
    i = data.draw(st.integers(0, len(mine) - 1))
    (a, n), (b, m) = mine[i], theirs[i]
    assert n == m
    mutated = corpus.data[:a] + corpus.other[b : b + m] + corpus.data[a + n :]
    corpus.assert_rejected(mutated)


def _reencode(header: dict) -> bytes:
    raw = canonical_json(header)
    return PRELUDE.pack(b"\x89SEALED\n", 1, 0, len(raw)) + raw


def _header(art_bytes: bytes) -> tuple[dict, int]:
    _, _, _, n = PRELUDE.unpack(art_bytes[: PRELUDE.size])
    return json.loads(art_bytes[PRELUDE.size : PRELUDE.size + n]), PRELUDE.size + n


HEADER_EDITS = [
    ("manifest", "model", "name"),
    ("manifest", "model", "version"),
    ("manifest", "model", "sha256"),
    ("manifest", "phi"),
    ("manifest", "payload", "segment_size"),
    ("manifest", "payload", "nonce_prefix"),
    ("manifest", "payload", "key_commitment"),
    ("manifest", "payload", "salt"),
    ("manifest", "created_at"),
    ("manifest", "signer_key_id"),
    ("signature", "key_id"),
    ("signature", "value"),
    ("recipients_mac",),
    ("recipients", 0, "kek_id"),
    ("recipients", 0, "wrapped"),
    ("recipients", 0, "provider"),
    ("manifest", "signature_io", "inputs", 0, "name"),
    ("manifest", "policy_profile"),
]


@settings(PROFILE, max_examples=150)
@given(edit=st.sampled_from(HEADER_EDITS), source=st.sampled_from(["other-artifact", "garbage"]))
def test_canonically_reencoded_header_edits_are_rejected(corpus: Corpus, edit: tuple, source: str):
    header, end = _header(corpus.data)
    donor, _ = _header(corpus.other)
    node, donor_node = header, donor
    for key in edit[:-1]:
        node, donor_node = node[key], donor_node[key]
    leaf = edit[-1]
    old = node[leaf]
    if source == "other-artifact" and donor_node[leaf] != old:
        node[leaf] = donor_node[leaf]
    elif isinstance(old, bool):
        node[leaf] = not old
    elif isinstance(old, int):
        node[leaf] = old + 1024
    elif isinstance(old, str) and old:
        node[leaf] = old[:-2] + ("AA" if not old.endswith("AA") else "BB")
    else:
        node[leaf] = "edited"
    corpus.assert_rejected(_reencode(header) + corpus.data[end:])


def test_whole_header_from_another_artifact_and_prelude_edits_are_rejected(corpus: Corpus):
    _, end = _header(corpus.data)
    _, other_end = _header(corpus.other)
    corpus.assert_rejected(corpus.other[:other_end] + corpus.data[end:])
    for version, flags in ((2, 0), (0, 0), (1, 1), (1, 0x8000)):
        mutated = bytearray(corpus.data)
        struct.pack_into(">HH", mutated, 8, version, flags)
        corpus.assert_rejected(bytes(mutated))
    for length in (0, 5 << 20, len(corpus.data)):
        mutated = bytearray(corpus.data)
        struct.pack_into(">I", mutated, 12, length)
        corpus.assert_rejected(bytes(mutated))


def test_at_least_a_thousand_mutations_were_tried(corpus: Corpus):
    # Runs last in this module (pytest keeps file order): the acceptance floor for the whole run.
    assert corpus.count >= 1000, corpus.count
