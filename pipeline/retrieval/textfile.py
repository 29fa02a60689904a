"""A text file's bytes as text, in whatever encoding it was saved: a BOM first, then UTF-8, then
charset-normalizer's best guess (Latin-1, CP-1252, UTF-16 without a BOM…), so a user's older
files are read rather than skipped. The encoding chosen is returned for the run record."""

from __future__ import annotations

import codecs

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE's BOM starts with UTF-16 LE's: first


class Undecodable(Exception):
    """The bytes are not text in any encoding found; its message is the skip reason."""


def decode(raw: bytes) -> tuple[str, str]:
    """(text, encoding name) of `raw`, BOM removed; `Undecodable` for binary data."""
    for name in [name for bom, name in _BOMS if raw.startswith(bom)][:1] + ["utf-8"]:
        try:
            return raw.decode(name), name
        except UnicodeDecodeError:
            pass  # a BOM on bytes that are not that encoding: left to the detector
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None or (b"\x00" in raw and not best.encoding.startswith("utf_")):
        raise Undecodable("binary")
    return str(best).removeprefix("\ufeff"), best.encoding
