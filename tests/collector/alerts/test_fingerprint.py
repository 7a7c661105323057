"""Alert fingerprints equal Alertmanager's (prometheus/common labelSetToFingerprint)."""

from __future__ import annotations

import functools

import pytest

from collector.alerts import fingerprint as fingerprint_module
from collector.alerts.fingerprint import (
    fingerprint,
    fingerprint_int,
    fingerprint_of_items,
    fingerprints_of_items,
)
from tests.helpers import python_child


def _reference(labels: dict[str, str]) -> str:
    """The published algorithm, written independently: FNV-1a 64 over one joined byte string."""
    parts = [
        k.encode("utf-8") + bytes([0xFF]) + labels[k].encode("utf-8") + bytes([0xFF])
        for k in sorted(labels, key=lambda k: k.encode("utf-8"))  # Go sorts bytes
    ]
    value = functools.reduce(
        lambda h, b: ((h ^ b) * 0x100000001B3) % (1 << 64), b"".join(parts), 0xCBF29CE484222325
    )
    return format(value, "016x")


CASES = [
    {},
    {"alertname": "GpuTemperature"},
    {"alertname": "GpuTemperature", "severity": "warning", "node": "x1000c0s0b0n0", "gpu": "3"},
    {"alertname": "NodeOffline", "node": "x1000c0s0b0n1", "note": ""},
    {"": ""},
    {"summary": "température élevée 🔥", "node": "nœud-ü", "ключ": "значение"},
    {"zeta": "1", "Alpha": "2", "alpha": "3", "_x": "4"},
]


@pytest.mark.parametrize("labels", CASES)
def test_fingerprint_matches_the_published_algorithm(labels: dict[str, str]) -> None:
    """Each label set (unicode, empty values, mixed case) hashes as the reference does."""
    assert fingerprint(labels) == _reference(labels)


def test_empty_label_set_is_the_bare_offset_basis() -> None:
    """No labels hashes nothing: the FNV-1a 64 offset basis, printed in hex."""
    assert fingerprint({}) == "cbf29ce484222325"
    assert fingerprint_int({}) == 14695981039346656037


def test_values_published_in_prometheus_common_tests() -> None:
    """prometheus/common model/signature_test.go's expected values (decimal there)."""
    assert fingerprint_int({"name": "garland, briggs", "fear": "love is not enough"}) == (
        5799056148416392346
    )
    assert fingerprint_int({"first-label": "first-label-value"}) == 5146282821936882169
    triple = {
        "first-label": "first-label-value",
        "second-label": "second-label-value",
        "third-label": "third-label-value",
    }
    assert fingerprint_int(triple) == 13843036195897128121


def test_pinned_literal_values() -> None:
    """Two label sets pinned once from the reference, so a silent change of algorithm shows."""
    gpu = {
        "alertname": "GpuTemperature",
        "severity": "warning",
        "node": "x1000c0s0b0n0",
        "gpu": "3",
    }
    assert fingerprint(gpu) == "dbe088098d40f6ad"
    assert fingerprint({"alertname": "NodeOffline", "node": "nöde-ü", "empty": ""}) == (
        "e112fb0cd06759a8"
    )


def test_fingerprint_is_sixteen_lowercase_hex_digits_even_with_leading_zeros() -> None:
    """Small hash values keep their leading zeros (``%016x``)."""
    for i in range(2000):
        fp = fingerprint({"i": str(i)})
        assert len(fp) == 16
        assert fp == fp.lower()
        assert int(fp, 16) == fingerprint_int({"i": str(i)})


def test_separator_keeps_name_value_boundaries_apart() -> None:
    """Moving a character across the name/value boundary changes the fingerprint."""
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})
    assert fingerprint({"a": "", "b": ""}) != fingerprint({"a": "b"})


def test_fingerprint_ignores_insertion_order() -> None:
    """Label names are sorted first, so dict order does not matter."""
    assert fingerprint({"b": "2", "a": "1"}) == fingerprint({"a": "1", "b": "2"})


def test_the_evaluators_remembered_fingerprint_equals_the_published_one() -> None:
    """The cached form the evaluator uses (items sorted by name) gives Alertmanager's value."""
    labels = {"alertname": "NodeStale", "severity": "warning", "node": "x1000c0s0b0n0", "é": ""}
    items = tuple(sorted(labels.items()))
    assert fingerprint_of_items(items) == fingerprint(labels)
    assert fingerprint_of_items(items) == fingerprint_of_items(items)  # from the cache


def test_a_mass_event_hashed_together_gives_each_alerts_own_fingerprint() -> None:
    """Thousands of new label sets at once (every node stale): the batched hash gives what
    Alertmanager gives for each, whatever the lengths, characters or repeats."""
    pinned = {"alertname": "GpuTemperature", "severity": "warning", "node": "x1000c0s0b0n0"}
    labels = [
        {"alertname": "NodeStale", "severity": "warning", "node": f"x1000c{c}s{s}b0n{n}"}
        for c in range(8)
        for s in range(16)
        for n in range(2)
    ]  # 256 sets, most of one length (one batch), some longer
    labels += [
        {"alertname": "NodeStale", "rack": f"A\u00a0{i}\n\U0001f525", "é": "ü" * (i % 3)}
        for i in range(40)
    ]
    labels += [{**pinned, "gpu": str(i)} for i in range(20)]  # the pinned value among them
    labels += [{}, {"a": ""}, {"ab": "c"}, {"a": "bc"}]  # too few of their length to batch
    labels += labels[:30]  # repeats within one call
    keys = [tuple(sorted(ls.items())) for ls in labels]
    got = fingerprints_of_items(keys)
    assert got == [fingerprint(ls) for ls in labels]
    assert got[labels.index({**pinned, "gpu": "3"})] == "dbe088098d40f6ad"
    assert got[labels.index({})] == f"{14695981039346656037:016x}"
    assert fingerprints_of_items(keys) == got  # the second time from the memo


@pytest.mark.parametrize("odd", ["", "\u00e9", "\u00ff", "\u0100", "\U0001f525", "\x7f\x80"])
def test_a_mass_event_of_ascii_label_sets_hashed_from_one_encoding(
    odd: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An all-ASCII batch is encoded at once (Latin-1 writes ASCII as UTF-8 does); one
    string with any other character among them (Latin-1 or not, U+00FF the separator's
    byte included) hashes each set as Alertmanager does all the same."""
    monkeypatch.setattr(fingerprint_module, "_memo", {})  # every set new, the empty one too
    tag = odd.encode().hex()
    labels: list[dict[str, str]] = [{}] + [
        {"alertname": "NodeStale", "severity": "warning", "node": f"{tag}n{i:0{1 + i % 3}d}"}
        for i in range(300)
    ]  # three lengths, 100 sets each
    labels += [{}] * 20 + [{"a": tag}, {"ab": tag}, {"": tag}]  # empty sets, short ones
    labels += labels[:40]  # repeats within one call
    labels.insert(150, {"alertname": "NodeStale", "node": f"n-{odd}"})
    keys = [tuple(sorted(ls.items())) for ls in labels]
    assert fingerprints_of_items(keys) == [fingerprint(ls) for ls in labels]


def test_hashing_a_mass_event_imports_no_more_of_numpy() -> None:
    """The collector has numpy loaded; hashing a batch uses its core only (``np.unique``'s
    first call imported ``numpy.ma``: 10-30 ms added to the first evaluation that made a few
    dozen alerts at once). In a child process, whose modules are its own."""
    code = (
        "import sys, numpy\n"
        "from collector.alerts.fingerprint import fingerprints_of_items\n"
        "before = set(sys.modules)\n"
        "keys = [(('alertname', 'A'), ('node', f'n{i:0{1 + i % 2}d}')) for i in range(40)]\n"
        "fingerprints_of_items(keys)\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('numpy')))\n"
    )
    assert python_child(code).split() == ["[]"]
