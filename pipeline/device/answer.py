"""What the user reads: the answer without special tokens or loops, and the evidence beside it.

- Special tokens (`<|im_end|>`, …) are the model's control text, never answer text.
- A 135M model decoding greedily often loops. `Guard` watches the words as they stream; once the
  last `REPEAT_WORDS` words already occurred in that order, the answer has started over: the
  runner is stopped and the repeat is cut from the answer. It also stops at the end of the
  first complete answer (`first_answer_end`), past which a small model's answers wander.
- Evidence: the sentences of the prompt's sources nearest the question by meaning (the release's
  own embedder `.pte`), with their document and character offsets. With a small model the
  quoted evidence is often the most useful part of an answer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.device.retrieve import STOPWORDS
from pipeline.device.sentences import boundaries, sentences, split

# Ten words again in the same order is a loop; six also cut lists whose items share a phrase
# ("adds an item to the end") on the tune half (bench/answer_levers.py).
REPEAT_WORDS = 10
REPEAT_CHARS = 24  # a unit of up to 16 characters filling the last 24: a loop without spaces
_ENDS = (".", "!", "?", "```", ".)", '."', ".*", ".**")
MIN_QUOTE_WORDS = 5
MAX_QUOTE_CHARS = 300  # a longer "sentence" (a run of code, a table) is quoted up to here + "…"
QUOTE_CANDIDATES = 24
OVERLAP_WEIGHT = 0.0  # weight of the question's words in a quote (bench/evidence_levers.py)
_WORD = re.compile(r"\S+")
_LETTER = re.compile(r"[^\W\d_]")  # a letter of any script
WORDLESS = "(The model gave no answer in words; the quotes below are what your documents say.)"
_BLOCK = re.compile(r"```.*?(?:```|$)", re.S)
_CONTENT = re.compile(r"[A-Za-z0-9_]+")


def content_words(text: str) -> set[str]:
    """Lower-cased words of three or more characters that are not stopwords."""
    return {w for w in (m.lower() for m in _CONTENT.findall(text))
            if len(w) >= 3 and w not in STOPWORDS}


def repeat_start(words: list[str], n: int = REPEAT_WORDS) -> int | None:
    """Where the repeat starts (a word index) when the last n words occurred before: walked back
    while the words before both occurrences agree, so the answer keeps its first cycle whole."""
    if len(words) < 2 * n:
        return None
    tail = len(words) - n
    for start in range(tail):
        if words[start : start + n] == words[tail:]:
            while start > 0 and words[start - 1] == words[tail - 1] and tail - 1 > start:
                start, tail = start - 1, tail - 1
            return tail
    return None


def answer_end(text: str) -> tuple[int | None, int | None]:
    """(end, pending) of the first complete answer in `text`, as character positions.

    The answer ends at the first blank line after some words, outside a code block, whose
    paragraph ended a sentence or a code block, unless the next paragraph announces more (its
    first line ends in ":": "Here's an example:" and its example belong to the answer). A
    paragraph ending in ":" or mid-sentence goes on. `pending` is such a blank line whose next
    line has not arrived whole yet: nothing after it may be shown until it is decided. A small
    model's next paragraph is where its answers wander."""
    fenced = False
    position, last = 0, ""
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not line.strip() and not fenced and _WORD.search(text[:position]) \
                and line.endswith("\n") and last.endswith(_ENDS):
            following = next((x for x in lines[number + 1:] if x.strip()), None)
            if following is None or not following.endswith("\n"):
                return None, position
            if not following.rstrip().endswith(":"):
                return position, None
        if line.strip():
            last = line.strip()
        position += len(line)
    return None, None


def char_repeat_start(text: str, span: int = REPEAT_CHARS, longest: int = 16) -> int | None:
    """Where a loop with no spaces to count words by starts (`::::…`, a CJK phrase again and
    again): the last `span` characters repeat a unit of at most `longest`; the index returned
    keeps the run's first unit."""
    for period in range(1, longest + 1):
        run = max(span, 3 * period)
        if len(text) < run:
            return None
        tail = text[-run:]
        if all(tail[i] == tail[i - period] for i in range(period, run)):
            start = len(text) - run
            while start > 0 and text[start - 1] == text[start - 1 + period]:
                start -= 1
            return start + period
    return None


def first_answer_end(text: str) -> int | None:
    """Where the first complete answer of a finished `text` ends (`answer_end`), if before its
    end: its last line is whole, newline or not (generation ended there)."""
    return answer_end(text if text.endswith("\n") else text + "\n")[0]


class Guard:
    """Streams pieces on, drops special tokens, and stops the runner when the answer loops, or
    (`first_answer`) when its first complete answer has ended, or after `most_sentences`
    sentences of prose.

    Text is held back while it is undecided: after a blank line that may end the answer, inside
    a code block until it closes, when `vet` (if given) may replace the block (with a note that
    an example no source says was left out), and, with `vet_sentence`, a sentence until it ends,
    when it may be replaced in the same way (a sentence naming a command no source says). So
    what streamed is what the answer keeps; `finish` sends what is left when generation ends."""

    def __init__(self, special: set[str], on_piece: Callable[[str], None],
                 stop: Callable[[], None], first_answer: bool = False,
                 vet: Callable[[str], str] | None = None,
                 vet_sentence: Callable[[str], str] | None = None,
                 most_sentences: int | None = None) -> None:
        self.special, self.on_piece, self.stop = special, on_piece, stop
        self.first_answer, self.vet, self.vet_sentence = first_answer, vet, vet_sentence
        self.most_sentences = most_sentences
        self.pieces: list[str] = []
        self.repeated = False
        self.ended = False
        self.wordless = False  # the model wrote no letter at all: `WORDLESS` stands instead
        self.shown = ""
        self._vetted: dict[str, str] = {}
        self._ends: list[int] = []  # where each kept sentence of prose ends, in the view

    def _view(self, closing: bool = False) -> tuple[str, int | None]:
        """The text so far with its closed code blocks and ended sentences vetted, and where
        undecided text starts (None when nothing is; `closing` decides it all, as if
        generation had ended). Sets `_ends`."""
        text = "".join(self.pieces)
        out: list[str] = []
        self._ends = []
        position = 0
        for block in _BLOCK.finditer(text):
            held = self._prose(text[position:block.start()], out, True)
            if held is not None:
                return "".join(out), held
            code = block.group()
            if block.group().count("```") < 2 and not closing and self.vet is not None:
                return "".join(out), len("".join(out))
            if self.vet is not None:
                if code not in self._vetted:
                    self._vetted[code] = self.vet(code)
                code = self._vetted[code]
            out.append(code)
            position = block.end()
        held = self._prose(text[position:], out, closing)
        return "".join(out), held

    def _prose(self, prose: str, out: list[str], whole: bool) -> int | None:
        """Append `prose` to `out` with each ended sentence vetted; its last sentence has ended
        when `whole`. Returns where the undecided rest starts (in the joined `out`), if any."""
        spans = split(prose)
        last = max(boundaries(prose), default=0)
        open_tick = _open_backtick(prose)
        position = 0
        for begin, end in spans:
            ended = (whole or end <= last) and (open_tick is None or end <= open_tick)
            if not ended and self.vet_sentence is not None:
                out.append(prose[position:begin])
                return len("".join(out))
            sentence = prose[begin:end]
            if self.vet_sentence is not None:
                if sentence not in self._vetted:
                    self._vetted[sentence] = self.vet_sentence(sentence)
                kept = self._vetted[sentence]
                if kept != sentence and "".join(out).rstrip().endswith(kept):
                    kept = ""  # one note for a run of sentences left out
            else:
                kept = sentence
            out.append(prose[position:begin] + kept if kept else "")
            if ended and kept == sentence:
                self._ends.append(len("".join(out)))
            position = end
        out.append(prose[position:])
        return None

    def _show(self, text: str, upto: int) -> None:
        if not self.shown and not _LETTER.search(text[:upto]):
            return  # no letter yet ("1. 1. 1."): not an answer until one comes
        if upto > len(self.shown):
            self.on_piece(text[len(self.shown):upto])
            self.shown = text[:upto]

    def __call__(self, piece: str) -> None:
        if self.repeated or self.ended or not piece or piece in self.special:
            return
        self.pieces.append(piece)
        text, open_block = self._view()
        end, pending = answer_end(text) if self.first_answer else (None, None)
        end = _earliest(end, self._budget_end())
        raw = "".join(self.pieces)
        looped = end is None and (repeat_start(_WORD.findall(raw)) is not None
                                  or char_repeat_start(raw) is not None)
        if looped and pending is not None:
            end = pending  # a complete answer, then the model started it over: it had ended
        if end is not None:
            self.ended = True
            self.stop()
            self._show(text, end)
            return
        held = [x for x in (pending, open_block) if x is not None]
        self._show(text, min(held) if held else len(text))
        if looped:  # what came before the repeat is decided: generation ends here
            self.repeated = True
            self.stop()
            self.pieces = [raw[:_repeat_cut(raw)]]
            text, _ = self._view(closing=True)
            self._show(text, len(text))

    def finish(self) -> None:
        """The end of generation: show what was held back and is part of the answer (a
        paragraph held after a complete answer is not, when generation ended on it)."""
        if not self.repeated and not self.ended:
            text, _ = self._view(closing=True)
            end = first_answer_end(text) if self.first_answer else None
            end = _earliest(end, self._budget_end())
            self._show(text, len(text) if end is None else end)
        if not self.shown:
            self.wordless = True
            self.on_piece(WORDLESS)
            self.shown = WORDLESS

    def _budget_end(self) -> int | None:
        """Where the answer's `most_sentences`-th kept sentence of prose ends, once it has."""
        if self.most_sentences is None or len(self._ends) < self.most_sentences:
            return None
        return self._ends[self.most_sentences - 1]

    def text(self) -> str:
        text = self.shown
        if self.repeated:
            text = text[:_repeat_cut(text)]
        return text.strip()


def _repeat_cut(text: str) -> int:
    """Where the repeat in `text` starts (by words, else by characters), or its end."""
    words = list(_WORD.finditer(text))
    cut = repeat_start([w.group() for w in words])
    if cut is not None:
        return words[cut].start()
    return char_repeat_start(text) or len(text)


def _earliest(*ends: int | None) -> int | None:
    return min((e for e in ends if e is not None), default=None)


def _open_backtick(text: str) -> int | None:
    """Where an inline code span opens that has not closed yet (its period is no end)."""
    ticks = [m.start() for m in re.finditer("`", text)]
    return ticks[-1] if len(ticks) % 2 else None


@dataclass(frozen=True)
class Evidence:
    source: str
    start: int
    end: int
    text: str
    nearness: float = 0.0  # the sentence's cosine with the question (the embedder's)
    citation: str = ""  # its chunk's source, pages and section (`retrieval.citation.cite`)


def evidence(question: str, passages: list[tuple[str, int, str, str]],
             embed: Callable[[list[str]], np.ndarray], most: int = 2,
             question_vector: np.ndarray | None = None,
             overlap_weight: float = OVERLAP_WEIGHT) -> list[Evidence]:
    """The `most` sentences of `passages` ((source, start offset, text, citation)) nearest the
    question by the embedder's meaning (cosine of unit vectors), plus `overlap_weight` times the
    share of the question's content words the sentence holds. Fragments under
    `MIN_QUOTE_WORDS` words are no quote, and a sentence already quoted is not quoted again
    (overlapping chunks hold it twice); at most `QUOTE_CANDIDATES` sentences are embedded,
    those sharing the most content words with the question first; ties go to the earlier
    source and sentence. `question_vector`, when the caller has it, saves embedding the
    question again."""
    wanted = content_words(question)
    candidates, seen = [], set()
    for order, (source, offset, text, citation) in enumerate(passages):
        for begin, end, sentence in sentences(text):
            if len(_WORD.findall(sentence)) >= MIN_QUOTE_WORDS and sentence not in seen:
                seen.add(sentence)
                overlap = len(wanted & content_words(sentence))
                candidates.append((-overlap, order, begin, Evidence(
                    source, offset + begin, offset + end, sentence, citation=citation)))
    candidates = sorted(candidates, key=lambda c: c[:3])[:QUOTE_CANDIDATES]
    if not candidates:
        return []
    quotes = [c[-1].text for c in candidates]
    if question_vector is None:
        vectors = embed([question, *quotes])
        question_vector, vectors = vectors[0], vectors[1:]
    else:
        vectors = embed(quotes)
    nearness = vectors @ question_vector
    share = np.array([-c[0] / max(len(wanted), 1) for c in candidates])
    score = nearness + overlap_weight * share
    ranked = sorted(zip(score, nearness, candidates, strict=True),
                    key=lambda t: (-round(float(t[0]), 4), t[2][1], t[2][2]))
    return [clipped(dataclasses.replace(candidate[-1], nearness=round(float(near), 4)))
            for _, near, candidate in ranked[:most]]


def clipped(quote: Evidence) -> Evidence:
    """The quote cut at the last word boundary before `MAX_QUOTE_CHARS`, with "…" (its `end`
    moved to match): a manual's example can be forty lines of C with no period in it."""
    if len(quote.text) <= MAX_QUOTE_CHARS:
        return quote
    cut = max(quote.text.rfind(space, 0, MAX_QUOTE_CHARS + 1) for space in " \n\t")
    cut = cut if cut > 0 else MAX_QUOTE_CHARS
    kept = quote.text[:cut].rstrip()
    return dataclasses.replace(quote, text=kept + " …", end=quote.start + len(kept))
