"""shared.text: an error line that echoes what the user gave stays a line."""

from __future__ import annotations

from shared.text import shortened


def test_shortened_cuts_only_overlong_words_and_keeps_the_fix() -> None:
    line = "error: no lease '" + "x" * 5_000 + "': see `collector lease list`"
    out = shortened(line)
    assert out == (
        "error: no lease '" + "x" * 63 + "... (5003 characters) ..." + "x" * 18 + "': see "
        "`collector lease list`"
    )
    path = "/srv/" + "d" * 300 + "/capwatch.db"  # the file name is kept
    assert shortened(f"cannot open {path}: denied").endswith("d/capwatch.db: denied")
    kept = "/" + "p" * 255  # a path of 256 characters: a word a line may hold
    assert shortened(kept) == kept
    assert shortened("plain line, nothing long") == "plain line, nothing long"
