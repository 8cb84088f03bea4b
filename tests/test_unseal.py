"""backend.mask_broker.unseal is byte-identical to the firmware's seal and seed expansion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.mask_broker import unseal
from hemsfw import masking, seal

VECTORS = json.loads((Path(__file__).parent / "vectors" / "masking.json").read_text())


def test_opens_the_vector_blob() -> None:
    v = VECTORS["sealing"]
    keys = unseal.derive(bytes.fromhex(v["key_hex"]))
    got = unseal.open_sealed(keys, v["ad"].encode(), bytes.fromhex(v["blob_hex"]))
    assert got == bytes.fromhex(v["plaintext_hex"])


def test_expansion_vector() -> None:
    v = VECTORS["expansion"]
    words = np.frombuffer(unseal.expand_seed(bytes.fromhex(v["seed_hex"]), v["frames"]),
                          dtype="<u4")
    assert words.tolist() == v["words"]


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), ad=st.binary(max_size=300),
       pt=st.binary(max_size=200), nonce=st.binary(min_size=16, max_size=16))
def test_same_as_firmware_on_random_inputs(key: bytes, ad: bytes, pt: bytes,
                                           nonce: bytes) -> None:
    blob = seal.seal(key, ad, pt, nonce)
    assert unseal.open_sealed(unseal.derive(key), ad, blob) == pt == seal.open_sealed(key, ad,
                                                                                      blob)


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), ad=st.binary(max_size=80),
       blob=st.binary(max_size=120), flip=st.integers(min_value=0, max_value=10_000))
def test_rejects_exactly_what_the_firmware_rejects(key: bytes, ad: bytes, blob: bytes,
                                                   flip: int) -> None:
    # a random blob, and a genuine one with one bit flipped: both refuse with bad_mac
    genuine = bytearray(seal.seal(key, ad, blob, bytes(16)))
    genuine[flip % len(genuine)] ^= 1 << (flip % 8)
    for b in (blob, bytes(genuine)):
        with pytest.raises(ValueError, match="bad_mac"):
            seal.open_sealed(key, ad, b)
        with pytest.raises(ValueError, match="bad_mac"):
            unseal.open_sealed(unseal.derive(key), ad, b)


def test_wrong_key_or_ad_is_bad_mac() -> None:
    key, ad = bytes(range(32)), b"hems/v1|mask|mb1|h1|d|1|r"
    blob = seal.seal(key, ad, b"s" * 32, bytes(16))
    with pytest.raises(ValueError, match="bad_mac"):
        unseal.open_sealed(unseal.derive(bytes(32)), ad, blob)
    with pytest.raises(ValueError, match="bad_mac"):
        unseal.open_sealed(unseal.derive(key), ad + b"x", blob)


@settings(max_examples=100, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), frames=st.integers(min_value=1, max_value=300))
def test_expand_seed_same_as_firmware(seed: bytes, frames: int) -> None:
    assert unseal.expand_seed(seed, frames) == bytes(masking.expand_seed(seed, frames))


def test_long_streams_past_the_cached_counters() -> None:
    key, ad, nonce = bytes(range(32)), b"ad", bytes(16)
    pt = os.urandom(70 * 32 + 5)
    blob = seal.seal(key, ad, pt, nonce)
    assert unseal.open_sealed(unseal.derive(key), ad, blob) == pt
    seed = bytes(32)
    assert unseal.expand_seed(seed, 600) == bytes(masking.expand_seed(seed, 600))


@settings(max_examples=60, deadline=None)
@given(seeds=st.lists(st.binary(min_size=32, max_size=32), max_size=6),
       frames=st.sampled_from([1, 7, 8, 9, 96, 97, 600]))
def test_expand_seeds_is_expand_seed_of_each(seeds: list[bytes], frames: int) -> None:
    """The mask broker's batch expansion: every seed's expand_seed, concatenated."""
    assert unseal.expand_seeds(b"".join(seeds), frames) == b"".join(
        bytes(masking.expand_seed(s, frames)) for s in seeds)


def test_expand_seeds_refuses_a_partial_seed() -> None:
    with pytest.raises(ValueError):
        unseal.expand_seeds(bytes(33), 8)
