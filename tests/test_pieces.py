"""Streamed pieces that split a character come out whole (`pipeline/device/pieces.py`)."""

from __future__ import annotations

import json

from pipeline.device.pieces import PieceDecoder, decoder_kind, runner_tokenizer

SPLIT = "naïve café — x → y 日本語 😀 done"


def test_byte_level_pieces_that_split_characters_come_out_whole(tiny_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    _, folder = tiny_tokenizer
    raw_file, kind = runner_tokenizer(folder / "tokenizer.json", tmp_path)
    raw = Tokenizer.from_file(str(raw_file))
    ids = raw.encode(SPLIT).ids
    pieces = [raw.id_to_token(i) for i in ids]
    # The tiny vocabulary has no merges for these: é, —, →, 日 and 😀 are one piece per byte.
    assert len(pieces) > len(SPLIT.split())
    decoder = PieceDecoder(kind, {"</s>"})
    shown = [decoder.feed(piece) for piece in pieces] + [decoder.flush()]
    assert "".join(shown) == SPLIT
    assert "" in shown  # some pieces were held until their character was complete
    assert all("\ufffd" not in text for text in shown)


def test_the_runners_tokenizer_encodes_as_the_release_does(tiny_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    _, folder = tiny_tokenizer
    raw_file, kind = runner_tokenizer(folder / "tokenizer.json", tmp_path)
    assert kind is not None and kind.name == "byte_level"
    assert json.loads(raw_file.read_text())["decoder"] is None
    original = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert Tokenizer.from_file(str(raw_file)).encode(SPLIT).ids == original.encode(SPLIT).ids


def test_special_tokens_pass_whole_and_flush_what_was_held():
    decoder = PieceDecoder(decoder_kind({"type": "ByteLevel"}), {"<|im_end|>"})
    assert decoder.feed("âĢ") == ""  # the first two bytes of "—"
    assert decoder.feed("<|im_end|>") == "\ufffd<|im_end|>"
    assert decoder.flush() == ""


def test_sentencepiece_byte_fallback_pieces_come_out_whole():
    gemma_like = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ",
                                                     "start": 1, "stop": 0}]}
    decoder = PieceDecoder(decoder_kind(gemma_like), set())
    pieces = ["▁caf", "<0xC3>", "<0xA9>", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁ok"]
    assert "".join(decoder.feed(p) for p in pieces) + decoder.flush() == "café 😀 ok"


def test_a_decoder_it_cannot_reproduce_keeps_the_tokenizer_as_it_is(tmp_path):
    spec = {"model": {"type": "WordPiece", "vocab": {}}, "decoder": {"type": "WordPiece"}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    assert runner_tokenizer(path, tmp_path / "unused") == (path, None)
    assert PieceDecoder(None, set()).feed("##ing") == "##ing"
