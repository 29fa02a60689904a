"""A text file's bytes as text, in whatever encoding it was saved: a BOM first, then UTF-8, then
charset-normalizer's best guess (Latin-1, CP-1252, UTF-16 without a BOM…), so a user's older
files are read rather than skipped. The encoding chosen is returned for the run record."""

from __future__ import annotations

import codecs

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE's BOM starts with UTF-16 LE's: first


# charset-normalizer ranks cp1250 first as often as cp1252 on a short French or German text
# (`crème` read as `crčme`, equally free of "chaos"): among the tied, these go first, in order.
# cp1252 is what Windows writes and what browsers read a page labelled ISO-8859-1 as.
WESTERN = ("cp1252", "iso8859_15", "latin_1")


class Undecodable(Exception):
    """The bytes are not text in any encoding found; its message is the skip reason."""


def decode(raw: bytes) -> tuple[str, str]:
    """(text, encoding name) of `raw`, BOM removed; `Undecodable` for binary data."""
    boms = [name for bom, name in _BOMS if raw.startswith(bom)][:1]
    for name in boms + (["utf-8"] if b"\x00" not in raw else []):  # NUL: binary, or UTF-16
        try:
            return raw.decode(name), name
        except UnicodeDecodeError:
            pass  # a BOM on bytes that are not that encoding: left to the detector
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    best = matches[0] if matches else None
    if best is not None:  # ties are common on short texts: prefer the Western encodings
        tied = [m for m in matches if m.chaos == best.chaos]
        best = next((m for name in WESTERN for m in tied if m.encoding == name), best)
    if best is None or (b"\x00" in raw and not best.encoding.startswith(("utf_16", "utf_32"))):
        raise Undecodable("binary")
    return str(best).removeprefix("\ufeff"), best.encoding
