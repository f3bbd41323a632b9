"""Tests for critical lines that `nox -s mutation` broke without any test noticing.

Each names its entry in tools/mutations.toml.
"""

from __future__ import annotations

import hashlib
import json

import pytest

import handles
from handles import SpecError
from handles.specs.sqlite import SqliteSpec
from support.kinds import EchoSpec


def test_the_key_is_sha256_of_the_canonical_utf8_json():
    # keys-sha256: computed here without handles' digest(), so a change in how keys
    # are hashed or encoded (every persisted key would stop matching) fails this.
    payload = {
        "format": 1,
        "kind": "test-echo",
        "schema": 1,
        "identity": {"name": "pinned", "version": 1},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert EchoSpec(name="pinned").cache_key() == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert EchoSpec(name="pinned").cache_key() == (
        "650c0d20453dfa4cff3dedc907801c11829ae37206a802bf14ff569a096aaab0"
    )


def test_an_integer_wider_than_1024_bits_is_refused_naming_the_field():
    # keys-wide-integers: the widest integer kept has 1024 bits.
    SqliteSpec(path="/tmp/app.db", pragmas={"cache_size": 2**1023})
    with pytest.raises(SpecError) as caught:
        SqliteSpec(path="/tmp/app.db", pragmas={"cache_size": 2**1024})
    assert str(caught.value) == "SqliteSpec.pragmas: cache_size is an integer wider than 1024 bits"


def test_an_env_pattern_never_allows_a_file_secret(monkeypatch):
    # trust-secret-source: a pattern allows references of its own source only.
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "127.0.0.1")
    document = json.dumps(
        {
            "kind": "database",
            "url": "postgresql+psycopg://app@127.0.0.1/sales",
            "password": "file:/run/secrets/pw",
        }
    )
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:*")
    with pytest.raises(SpecError, match="may not read the secret 'file:/run/secrets/pw'"):
        handles.spec_from_json(document)
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "file:/run/secrets/*")
    assert handles.spec_from_json(document).password is not None
