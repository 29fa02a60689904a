"""Streamed pieces made whole: the runner's tokens turned into complete UTF-8 characters.

ExecuTorch 1.5.1's `TextLLMRunner` decodes each generated token to bytes and hands them to the
Python callback as `str`; a token that ends inside a multi-byte character (`—` is two of
SmolLM2's tokens, `日` is split too, an emoji is three) fails that conversion with a
UnicodeDecodeError inside `generate`. So the runner gets a copy of the tokenizer whose decoder
is switched off: each piece then arrives as the token's own vocabulary string (always valid
UTF-8: byte-level BPE spells bytes as printable characters, SentencePiece as `<0xE2>`), and
`PieceDecoder` maps it back to bytes and holds an incomplete character until its last byte
comes. Encoding, and so every prompt, is unchanged: the decoder plays no part in it.

Tokenizers whose decoder is neither kind keep their own decoder (`runner_tokenizer` returns the
file unchanged and `PieceDecoder.kind` is None): their pieces are passed on as they come.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: each byte spelled as one printable character (printable
    Latin-1 bytes as themselves, the rest shifted past 255), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    spelled = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in spelled:
            spelled[byte] = chr(256 + shifted)
            shifted += 1
    return {char: byte for byte, char in spelled.items()}


_BYTE_LEVEL = _byte_level_alphabet()


@dataclass(frozen=True)
class DecoderKind:
    name: str  # "byte_level" or "sentencepiece"
    replace: tuple[tuple[str, str], ...] = ()  # SentencePiece's `▁` → " " (Replace decoders)
    strip_leading: int = 0  # spaces a Strip decoder takes off the start of the text


def decoder_kind(decoder: dict | None) -> DecoderKind | None:
    """Which raw-piece decoding reproduces this `tokenizer.json` decoder, if one does."""
    if not isinstance(decoder, dict):
        return None
    if decoder.get("type") == "ByteLevel":
        return DecoderKind("byte_level")
    steps = decoder.get("decoders") if decoder.get("type") == "Sequence" else [decoder]
    if not isinstance(steps, list) or not any(
            isinstance(s, dict) and s.get("type") == "ByteFallback" for s in steps):
        return None
    replace, strip = [], 0
    for step in steps:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "Replace" and isinstance(step.get("pattern"), dict) \
                and "String" in step["pattern"]:
            replace.append((step["pattern"]["String"], step.get("content", "")))
        elif kind == "Strip":
            strip = int(step.get("start", 0))
        elif kind not in ("ByteFallback", "Fuse"):
            return None  # a step we cannot reproduce piece by piece
    return DecoderKind("sentencepiece", tuple(replace), strip)


class PieceDecoder:
    """Raw pieces in, complete characters out (`feed`); `flush` ends a stream."""

    def __init__(self, kind: DecoderKind | None, special: set[str]) -> None:
        self.kind, self.special = kind, special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._to_strip = kind.strip_leading if kind else 0

    def _bytes(self, piece: str) -> bytes:
        assert self.kind is not None
        if self.kind.name == "byte_level":
            return bytes(_BYTE_LEVEL[char] if char in _BYTE_LEVEL else 0x3F for char in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        for pattern, content in self.kind.replace:
            piece = piece.replace(pattern, content)
        return piece.encode()

    def feed(self, piece: str) -> str:
        if self.kind is None:
            return piece
        if piece in self.special:  # control text passes whole, after what came before it
            return self._utf8.decode(b"", final=True) + piece
        text = self._utf8.decode(self._bytes(piece))
        while self._to_strip and text[:1] == " ":
            text, self._to_strip = text[1:], self._to_strip - 1
        if text:
            self._to_strip = 0
        return text

    def flush(self) -> str:
        """What is left at the end: an incomplete character becomes U+FFFD, never an error."""
        return self._utf8.decode(b"", final=True) if self.kind is not None else ""


def runner_tokenizer(tokenizer_file: Path, workdir: Path) -> tuple[Path, DecoderKind | None]:
    """The tokenizer file the stock runner loads (decoder off when `PieceDecoder` can do its
    work), and the decoding the pieces then need."""
    spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    kind = decoder_kind(spec.get("decoder"))
    if kind is None:
        return tokenizer_file, None
    spec["decoder"] = None
    raw = workdir / "tokenizer.raw-pieces.json"
    raw.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return raw, kind
