"""`edgerag ask`: the on-device RAG loop over a release bundle, offline by construction.

Everything runs from the bundle's files, checked against its manifest first: the question is
embedded by the embedder `.pte`, usearch returns the nearest chunks, the prompt is fitted to the
LLM `.pte`'s own sequence length, and ExecuTorch's stock `TextLLMRunner` streams the answer.
Nothing here opens a socket (a test runs it with socket creation disabled).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BadInput
from pipeline.release import bundle, prompt
from pipeline.runtime import native_logs, runner_rates


@dataclass(frozen=True)
class Source:
    n: int
    source: str
    start: int
    end: int
    score: float


@dataclass
class Answer:
    question: str
    answer: str
    sources: list[Source]
    timings: dict[str, float]


def _context_length(pte: Path) -> int:
    """The tokens one generation may span: the `.pte`'s max sequence and context lengths."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(pte))
    lengths = [int(program.load_method(name).execute([])[0])
               for name in ("get_max_seq_len", "get_max_context_len")
               if name in program.method_names]
    if not lengths:
        raise BadInput(f"{pte} has no get_max_seq_len method; it is not an LLM `.pte` the "
                       "stock runner can drive.")
    return min(lengths)


class Assistant:
    """A release loaded once (models stay in memory across questions) and asked many times."""

    def __init__(self, release: Path, verbose: bool = False) -> None:
        from usearch.index import Index

        from pipeline.retrieval.corpus import read_chunks
        from pipeline.retrieval.embedder import load_pte_files
        from pipeline.runtime import register_llm_kernels, text_runner

        self.release = bundle.open_release(release).path
        files = {name: self.release / name for name in (*bundle.FILES, *bundle.OPTIONAL)}
        self.index = Index.restore(str(files[bundle.INDEX]))
        self.chunks = {c.key: c for c in read_chunks(files[bundle.CHUNKS])}
        self.embedder = load_pte_files(files[bundle.EMBEDDER], files[bundle.EMBEDDER_TOKENIZER],
                                       self.index.ndim)
        self.counter = prompt.TokenCounter.from_file(files[bundle.TOKENIZER])
        self.chat = prompt.ChatFormat.from_files(files[bundle.CHAT_TEMPLATE],
                                                 files[bundle.TOKENIZER_CONFIG])
        register_llm_kernels()
        self.verbose = verbose
        with native_logs(verbose):
            self.context_length = _context_length(files[bundle.LLM])
            self.runner = text_runner(files[bundle.LLM], files[bundle.TOKENIZER])

    def retrieve(self, question: str, k: int) -> list[tuple[Any, float]]:
        vector = self.embedder.embed([question])[0]
        matches = self.index.search(vector, k)
        return [(self.chunks[int(key)], round(1.0 - float(distance), 4))
                for key, distance in zip(matches.keys, matches.distances, strict=True)]

    def ask(self, question: str, k: int, max_new_tokens: int,
            on_piece: Callable[[str], None]) -> Answer:
        from executorch.extension.llm.runner import GenerationConfig

        budget = self.context_length - max_new_tokens
        if budget < 1:
            raise BadInput(f"--max-new-tokens={max_new_tokens} leaves no room for a prompt in "
                           f"the model's {self.context_length}-token context.")
        started = time.monotonic()
        hits = self.retrieve(question, k)
        retrieval_ms = (time.monotonic() - started) * 1000.0
        fitted = prompt.fit(question, [(chunk.source, chunk.text) for chunk, _ in hits],
                            self.chat.render, self.counter, budget)
        placed = zip(hits[: len(fitted.texts)], fitted.texts, strict=True)
        sources = [Source(n, chunk.source, chunk.start, chunk.start + len(text), score)
                   for n, ((chunk, score), text) in enumerate(placed, start=1)]
        pieces: list[str] = []
        stats: list[Any] = []

        def stream(piece: str) -> None:
            pieces.append(piece)
            on_piece(piece)

        self.runner.reset()
        # warming=True only turns off the runner's own printing of tokens and of its report to
        # stdout (we stream through the callback, and --json must own stdout); stats still come.
        with native_logs(self.verbose):
            self.runner.generate(fitted.prompt, GenerationConfig(
                max_new_tokens=max_new_tokens, temperature=0.0, echo=False, warming=True),
                stream, stats.append)
        return Answer(question, "".join(pieces), sources,
                      _timings(retrieval_ms, fitted.tokens, stats[-1] if stats else None))


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


def _questions(question: str | None) -> Iterator[str]:
    """The one question given, or every non-empty line of stdin until EOF."""
    if question is not None:
        yield question
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def _print_sources(sources: list[Source]) -> None:
    print("\n\nSources:")
    for source in sources:
        print(f"[{source.n}] {source.source}, characters {source.start}-{source.end} "
              f"(similarity {source.score:.2f})")


def main(question: str | None, release: str, k: int, max_new_tokens: int,
         as_json: bool, verbose: bool = False) -> None:
    if k < 1 or max_new_tokens < 1:
        raise BadInput(f"--k={k} and --max-new-tokens={max_new_tokens} must both be at least 1.")
    assistant = Assistant(Path(release), verbose)
    for asked in _questions(question):
        if as_json:
            answer = assistant.ask(asked, k, max_new_tokens, lambda _piece: None)
            print(json.dumps(asdict(answer), ensure_ascii=False), flush=True)
        else:
            answer = assistant.ask(asked, k, max_new_tokens,
                                   lambda piece: print(piece, end="", flush=True))
            _print_sources(answer.sources)
