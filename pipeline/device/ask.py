"""`edgerag ask`: the on-device RAG loop over a release bundle, offline by construction.

Everything runs from the bundle's files, checked against its manifest first: the question is
embedded by the embedder `.pte`, usearch returns the nearest chunks, the prompt is fitted to the
LLM `.pte`'s own sequence length, and ExecuTorch's stock `TextLLMRunner` streams the answer.
Nothing here opens a socket (a test runs it with socket creation disabled).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline import bundle
from pipeline.config import RetrievalConfig
from pipeline.device import abstain, examples, prompt
from pipeline.device.answer import Evidence, Guard, evidence
from pipeline.device.pieces import PieceDecoder, runner_tokenizer
from pipeline.device.retrieve import Retriever
from pipeline.device.unsupported import unsupported
from pipeline.errors import BadInput
from pipeline.retrieval.citation import cite
from pipeline.retrieval.corpus import Chunk
from pipeline.runtime import context_length, native_logs, runner_rates

# Stop at the end of the first complete answer (`answer.first_answer_end`): measured on the
# tune half (bench/answer_levers.py), it is what keeps a small model from looping.
FIRST_ANSWER = True
# What stands in the answer for a code block, or a sentence naming code, that no placed source
# says (`unsupported`): it is never shown as advice.
LEFT_OUT = "(An example that is not in your documents was left out.)"
LEFT_OUT_SENTENCE = "(A step naming code that is not in your documents was left out.)"
# The answer ends after this many sentences of prose (None: no limit). On pydoc's tune half
# (bench/answer_levers.py) three cut loops 0.182 -> 0.121 with answer terms unchanged (0.197);
# two cut them to 0.061 but lost terms (0.167).
MOST_SENTENCES: int | None = 3


@dataclass(frozen=True)
class Source:
    n: int
    source: str
    start: int
    end: int
    score: float
    citation: str = ""  # `manual.pdf, p. 37–38, § Log files` (`retrieval.citation.cite`)
    page_start: int | None = None  # pages of a paged format (PDF), else None
    page_end: int | None = None
    in_prompt: bool = True  # the LLM read it (to `end`); the rest are quoted and shown only


@dataclass
class Answer:
    question: str
    answer: str
    sources: list[Source]
    evidence: list[Evidence]
    timings: dict[str, float]
    repeated: bool  # the answer started over and was cut there
    fit: dict[str, int | bool]  # chunks meant for the prompt vs placed, the last placed cut?
    unsupported: list[str] = field(default_factory=list)  # code no placed source says
    abstained: bool = False  # the documents do not answer it (`abstain`): no answer generated
    signals: dict[str, float] = field(default_factory=dict)  # what `abstain.Rule` judged
    left_out: list[str] = field(default_factory=list)  # invented code, not shown

    @property
    def context_cut(self) -> bool:
        return self.fit["placed"] < self.fit["retrieved"] or bool(self.fit["last_cut"])

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def _context_length(pte: Path) -> int:
    length = context_length(pte)
    if length is None:
        raise BadInput(f"{pte} has no get_max_seq_len method; it is not an LLM `.pte` the "
                       "stock runner can drive.")
    return length


def _special_tokens(tokenizer_file: Path) -> set[str]:
    from tokenizers import Tokenizer

    decoder = Tokenizer.from_file(str(tokenizer_file)).get_added_tokens_decoder()
    return {token.content for token in decoder.values() if token.special}


def open_retrieval(files: dict[str, Path], retrieval: RetrievalConfig,
                   verbose: bool = False) -> tuple[Retriever, dict[int, Any]]:
    """The retrieval half of a release (or a build): its retriever and its chunks by key, for
    what needs no LLM (evaluate_rag's probes) and for `Assistant`."""
    from usearch.index import Index

    from pipeline.retrieval.corpus import read_chunks
    from pipeline.retrieval.embedder import load_pte_files

    with native_logs(verbose):  # loading logs from C++ too (tokenizer regexes, metadata)
        # Memory-mapped, as a phone opens it: a large index is paged in as searched.
        index = Index.restore(str(files[bundle.INDEX]), view=True)
        if files.get(bundle.INDEX_SETTINGS, Path()).is_file():
            settings = json.loads(files[bundle.INDEX_SETTINGS].read_text())
            index.expansion_search = settings["expansion_search"]
        chunks = {c.key: c for c in read_chunks(files[bundle.CHUNKS])}
        embedder = load_pte_files(files[bundle.EMBEDDER], files[bundle.EMBEDDER_TOKENIZER],
                                  index.ndim)
        reranker = None
        if retrieval.rerank and files.get(bundle.RERANKER, Path()).is_file():
            from pipeline.retrieval import reranker as cross_encoder

            reranker = cross_encoder.load_pte_files(files[bundle.RERANKER],
                                                    files[bundle.RERANKER_TOKENIZER])
    retriever = Retriever(index, files[bundle.STORE], embedder, retrieval, reranker)
    _check_consistent(retriever, chunks)
    return retriever, chunks


def _check_consistent(retriever: Retriever, chunks: dict[int, Any]) -> None:
    """The index, the keyword store and the chunk list hold the same chunks: a release whose
    manifest was re-hashed over files that do not belong together is refused at open, naming
    the file, instead of failing at its first question."""
    import sqlite3

    import numpy as np

    try:
        stored = {int(key) for (key,) in retriever.db.execute("SELECT key FROM chunks")}
    except sqlite3.DatabaseError as error:
        raise BadInput(f"{bundle.STORE} is not a readable chunk store ({error}); re-fetch the "
                       "release.") from None
    keys = np.array(sorted(chunks), dtype=np.uint64)
    if stored != set(chunks):
        raise BadInput(f"{bundle.STORE} holds {len(stored)} chunks, {bundle.CHUNKS} "
                       f"{len(chunks)}, not the same ones: the release's files do not belong "
                       "together; re-fetch the release.")
    if len(retriever.index) != len(chunks) or not bool(np.all(retriever.index.contains(keys))):
        raise BadInput(f"{bundle.INDEX} holds {len(retriever.index)} vectors, not one for each "
                       f"of the {len(chunks)} chunks: the release's files do not belong "
                       "together; re-fetch the release.")


class Assistant:
    """A release (or a build's artifacts) loaded once and asked many times: the same code runs
    `edgerag ask` and the evaluate_rag stage."""

    def __init__(self, files: dict[str, Path], retrieval: RetrievalConfig,
                 verbose: bool = False) -> None:
        from pipeline.runtime import text_runner

        self.verbose = verbose
        self.first_answer, self.most_sentences = FIRST_ANSWER, MOST_SENTENCES
        self.vet_sentences = True
        self.documents_examples = True  # an invented block gives way to the sources' example
        self.abstention = abstain.rule(retrieval)
        self.retriever, self.chunks = open_retrieval(files, retrieval, verbose)
        self._placed = {(c.source, c.start): c for c in self.chunks.values()}
        with native_logs(verbose):
            self.counter = prompt.TokenCounter.from_file(files[bundle.TOKENIZER])
            # A pretrained model's run has no chat template (Gemma 3 270M): the plain prompt.
            self.chat = prompt.ChatFormat.from_files(files.get(bundle.CHAT_TEMPLATE),
                                                     files.get(bundle.TOKENIZER_CONFIG),
                                                     self.counter)
            self.special = _special_tokens(files[bundle.TOKENIZER])
            self.context_length = _context_length(files[bundle.LLM])
            # The runner's own copy of the tokenizer, its pieces made whole here (`pieces`).
            self._workdir = tempfile.TemporaryDirectory(prefix="edgerag-ask-")
            tokenizer, self.decoding = runner_tokenizer(files[bundle.TOKENIZER],
                                                        Path(self._workdir.name))
            self.runner = text_runner(files[bundle.LLM], tokenizer)

    def passage(self, source: Source) -> str:
        """The text a source put in the prompt (its chunk, cut where the prompt cut it)."""
        chunk = self._placed[(source.source, source.start)]
        return chunk.text[: source.end - source.start]

    def context_need(self, questions: list[str], k: int, max_new_tokens: int) -> int:
        """`prompt.context_need` over this release's chunks, as `ask` would place them (the
        first `retrieval.prompt_chunks` of the `k`)."""
        k = min(k, self.retriever.cfg.prompt_chunks)
        passages = [(chunk.heading or chunk.source, chunk.text) for chunk in self.chunks.values()]
        longest = max(questions, key=self.counter.count, default="")
        return prompt.context_need(longest, passages, k, max_new_tokens, self.chat.render,
                                   self.counter)

    @classmethod
    def from_release(cls, release: Path, verbose: bool = False) -> Assistant:
        """A release checked against its manifest, retrieving as its build was configured. The
        session reads a private copy made while checking it, so a release replaced or
        truncated while the session runs (its files are memory-mapped) cannot end it."""
        private = tempfile.TemporaryDirectory(prefix="edgerag-release-")
        opened = bundle.open_release(release, copy_to=Path(private.name))
        settings = (opened.manifest.get("config") or {}).get("retrieval") or {}
        retrieval = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RetrievalConfig),
                                                        settings))
        files = {name: opened.path / name for name in (*bundle.FILES, *bundle.OPTIONAL)}
        assistant = cls(files, retrieval, verbose)
        assistant.private_copy = private  # removed with the session
        return assistant

    def ask(self, question: str, k: int | None, max_new_tokens: int,
            on_piece: Callable[[str], None]) -> Answer:
        if not question.strip():
            raise BadInput("the question is empty; ask something about the documents.")
        budget = self.context_length - max_new_tokens
        if budget < 1:
            raise BadInput(f"--max-new-tokens={max_new_tokens} leaves no room for a prompt in "
                           f"the model's {self.context_length}-token context.")
        started = time.monotonic()
        with native_logs(self.verbose):
            found = self.retriever.search(question, k)
        hits = [(self.chunks[key], round(score, 5)) for key, score in found]
        retrieval_ms = (time.monotonic() - started) * 1000.0
        offered = hits[: self.retriever.cfg.prompt_chunks]
        passages = [(chunk.heading or chunk.source, chunk.text) for chunk, _ in offered]
        fitted = prompt.fit(question, passages, self.chat.render, self.counter, budget)
        read = fitted.texts + [None] * (len(hits) - len(fitted.texts))
        fit = {"retrieved": len(offered), "placed": len(fitted.texts),
               "last_cut": bool(fitted.texts)
               and len(fitted.texts[-1]) < len(offered[len(fitted.texts) - 1][0].text)}
        sources = [Source(n, chunk.source, chunk.start,
                          chunk.start + len(chunk.text if text is None else text), score,
                          _cite(chunk), chunk.page_start, chunk.page_end, text is not None)
                   for n, ((chunk, score), text)
                   in enumerate(zip(hits, read, strict=True), start=1)]
        shown = [(chunk, chunk.text if text is None else text)
                 for (chunk, _), text in zip(hits, read, strict=True)]
        texts = [text for _, text in shown]
        quoted = evidence(question, [(chunk.source, chunk.start, text, _cite(chunk))
                                     for chunk, text in shown],
                          self.retriever.embedder.embed,
                          question_vector=self.retriever.query_vector(question))
        measured = abstain.signals(self.retriever, question, [c.key for c, _ in shown],
                                   texts, quoted[0].nearness if quoted else 0.0)
        abstained = self.abstention is not None and self.abstention.abstains(measured)
        if abstained:
            on_piece(abstain.ABSTENTION)
            text, repeated, stats, left_out = abstain.ABSTENTION, False, None, []
        else:
            def documented() -> str | None:
                if not self.documents_examples:
                    return None
                found = examples.nearest(self.retriever.query_vector(question),
                                         [(text, _cite(chunk)) for chunk, text in shown],
                                         self.retriever.embedder.embed)
                return examples.shown(found) if found else None

            text, repeated, stats, left_out = self._generate(fitted.prompt, max_new_tokens,
                                                             texts, on_piece, documented)
        timings = _timings(retrieval_ms, fitted.tokens, stats)
        timings["total_ms"] = round((time.monotonic() - started) * 1000.0, 1)
        return Answer(question, text, sources, quoted, timings, repeated, fit,
                      [] if abstained else unsupported(text, texts), abstained, measured,
                      left_out)

    def _generate(self, prompt_text: str, max_new_tokens: int, sources: list[str],
                  on_piece: Callable[[str], None],
                  documented: Callable[[], str | None] = lambda: None,
                  ) -> tuple[str, bool, Any, list[str]]:
        """The stock runner's answer to the fitted prompt, streamed through `Guard`; a code
        block or a sentence naming code that no source says is left out of it (and returned),
        a block in favour of the sources' nearest example (`documented`) when they have one."""
        from executorch.extension.llm.runner import GenerationConfig

        left_out: list[str] = []

        def vetting(note: Callable[[], str | None]) -> Callable[[str], str]:
            def vet(code: str) -> str:
                if not unsupported(code, sources):
                    return code
                left_out.append(code)
                return note() or LEFT_OUT
            return vet

        guard = Guard(self.special, on_piece, self.runner.stop, self.first_answer,
                      vetting(documented),
                      vetting(lambda: LEFT_OUT_SENTENCE) if self.vet_sentences else None,
                      self.most_sentences)
        decoder = PieceDecoder(self.decoding, self.special)
        stats: list[Any] = []
        self.runner.reset()
        # warming=True only turns off the runner's own printing of tokens and of its report to
        # stdout (we stream through the callback, and --json must own stdout); stats still come.
        with native_logs(self.verbose):
            self.runner.generate(prompt_text, GenerationConfig(
                max_new_tokens=max_new_tokens, temperature=0.0, echo=False, warming=True),
                lambda piece: guard(decoder.feed(piece)), stats.append)
        guard(decoder.flush())
        guard.finish()
        return guard.text(), guard.repeated, stats[-1] if stats else None, left_out


def _cite(chunk: Chunk) -> str:
    return cite(chunk.source, chunk.heading, chunk.page_start, chunk.page_end)


def _timings(retrieval_ms: float, prompt_tokens: int, stats: Any) -> dict[str, float]:
    """Retrieval wall time, and the runner's own rates (`runtime.runner_rates`, the formula the
    speed evaluation and the bench use)."""
    timings = {"retrieval_ms": round(retrieval_ms, 1), "prompt_tokens": prompt_tokens}
    if stats is not None:
        rates = runner_rates(stats)
        timings.update({
            "time_to_first_token_ms": rates["time_to_first_token_ms"],
            "decode_tok_s": rates["decode_tok_s"],
            "generated_tokens": rates["generated_tokens"],
            "runner_prompt_tokens": rates["prompt_tokens"],
        })
    return timings


def _readable(question: str, where: str) -> None:
    """Refuse a question the tokenizer cannot take: bytes that are not UTF-8."""
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{where} is not valid UTF-8 text; ask in UTF-8.") from None


def _questions(question: str | None) -> Iterator[str]:
    """The one question given, or every non-empty line of stdin until EOF (a line that is not
    UTF-8 comes through with its bad bytes kept as surrogates, for `_readable` to refuse)."""
    if question is not None:
        yield question
        return
    if sys.stdin is None or sys.stdin.closed:
        raise BadInput("no question was given and stdin is closed; pass the question as an "
                       "argument or on stdin.")
    interactive = sys.stdin.isatty()
    lines = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        raw = lines.readline() if lines is not None else sys.stdin.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
        if line.strip():
            yield line.strip()


def _print_sources(answer: Answer) -> None:
    """What follows the streamed answer: a warning on invented code, the evidence quotes, then
    the sources."""
    if answer.repeated:
        print(" […]", end="")
    if answer.unsupported:
        spans = ", ".join(f"`{span}`" for span in answer.unsupported)
        print(f"\n\n(not in your documents, do not run or rely on: {spans})", end="")
    if answer.evidence:
        print("\n\nEvidence:")
        for quote in answer.evidence:
            print(f"- \"{quote.text}\" ({quote.citation})")
    print("\nSources:" if answer.evidence else "\n\nSources:")
    for source in answer.sources:
        print(f"[{source.n}] {source.citation}, characters {source.start}-{source.end} "
              f"(score {source.score:.4f})" + ("" if source.in_prompt else ", not in the prompt"))
    if answer.context_cut:
        fit = answer.fit
        print(f"(the prompt held {fit['placed']} of the {fit['retrieved']} chunks meant for it"
              + (", the last one cut short" if fit["last_cut"] else "")
              + ": the model's context is full; a smaller --k or --max-new-tokens makes room)")


def _check_flags(k: int | None, max_new_tokens: int) -> None:
    for flag, value in (("--k", k), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise BadInput(f"{flag}={value} must be at least 1.")


def main(question: str | None, release: str, k: int | None, max_new_tokens: int,
         as_json: bool, verbose: bool = False) -> int:
    """Answer each question; a bad one (not UTF-8, empty, longer than the context) is refused
    in one line on stderr and the session goes on, and the exit status is then 2. A reader
    that stops reading (`ask … | head -1`) ends the session quietly, with status 0."""
    _check_flags(k, max_new_tokens)
    if question is not None:
        _readable(question, "the question")
    assistant = Assistant.from_release(Path(release), verbose)
    refused = 0
    try:
        for number, asked in enumerate(_questions(question), start=1):
            try:
                _readable(asked, f"stdin line {number}")
                if as_json:
                    answer = assistant.ask(asked, k, max_new_tokens, lambda _piece: None)
                    print(answer.as_json(), flush=True)
                else:
                    answer = assistant.ask(asked, k, max_new_tokens,
                                           lambda piece: print(piece, end="", flush=True))
                    _print_sources(answer)
            except BadInput as error:
                if question is not None:
                    raise
                refused += 1
                print(f"edgerag: {error}", file=sys.stderr, flush=True)
    except BrokenPipeError:
        # Python's advice for a closed pipe: point stdout at /dev/null so the interpreter's
        # own flush at exit does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return 2 if refused else 0
