"""shared.text: an error line that echoes what the user gave stays a line."""

from __future__ import annotations

from shared.text import shortened


def test_shortened_cuts_only_overlong_words_and_keeps_the_fix() -> None:
    line = "error: no lease '" + "x" * 5_000 + "': see `collector lease list`"
    out = shortened(line)
    assert out.startswith("error: no lease '" + "x" * 63 + "... (5003 characters)")
    assert out.endswith(" see `collector lease list`")
    kept = "/" + "p" * 255  # a path of 256 characters: a word a line may hold
    assert shortened(kept) == kept
    assert shortened("plain line, nothing long") == "plain line, nothing long"
