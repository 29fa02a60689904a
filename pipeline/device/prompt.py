"""Fit the retrieved passages and the question into the LLM's context, in the model's chat format.

Tokens are counted with the LLM's own tokenizer.json (the file the runner encodes with) on the
fully rendered prompt, so the template's text and special tokens count too. Passages go in by
rank; the first one that does not fit whole is cut at a token boundary and nothing follows it.
The prompt plus the tokens to generate never exceed the budget, or the question is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from pipeline.errors import BadInput

SYSTEM = "Answer from the numbered sources only and cite them like [1]; if they lack it, say so."
Passage = tuple[str, str]  # (heading, text)
Render = Callable[[str, list[Passage]], str]


@dataclass
class TokenCounter:
    """Counts and cuts text in the LLM's tokens (no BOS/EOS: the runner adds none by default)."""

    tokenizer: Tokenizer

    @classmethod
    def from_file(cls, path: Path) -> TokenCounter:
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def cut(self, text: str, tokens: int) -> str:
        """The longest prefix of `text` made of its first `tokens` tokens."""
        offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
        if tokens >= len(offsets):
            return text
        return text[: offsets[tokens - 1][1]] if tokens > 0 else ""


def user_message(question: str, passages: list[Passage], question_first: bool = False) -> str:
    """The sources, then the question; `question_first` also asks it before them."""
    sources = "\n\n".join(f"[{n}] {heading}\n{text}"
                          for n, (heading, text) in enumerate(passages, start=1))
    before = f"Question: {question}\n\n" if question_first else ""
    return f"{before}Sources:\n{sources or 'none found.'}\n\nQuestion: {question}"


class ChatFormat:
    """The model's chat template (Jinja, sandboxed as transformers renders it), or plain text."""

    def __init__(self, template: str | None, special_tokens: dict[str, str],
                 system: str = SYSTEM, opening: str = "") -> None:
        """`opening` starts a plain-text prompt: what the tokenizer's own post-processor puts
        before every text (Gemma's `<bos>`), which the runner, adding nothing, would omit."""
        self.special_tokens, self.system, self.opening = special_tokens, system, opening
        self.question_first = False
        self.template = None
        if template:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[loopcontrols])
            env.globals["raise_exception"] = _raise
            self.template = env.from_string(template)

    @classmethod
    def from_files(cls, template_file: Path | None, config_file: Path | None,
                   counter: TokenCounter | None = None) -> ChatFormat:
        """Either file may be absent (None or missing): a run whose model has neither."""
        settings = (json.loads(config_file.read_text())
                    if config_file is not None and config_file.is_file() else {})
        template = (template_file.read_text()
                    if template_file is not None and template_file.is_file()
                    else settings.get("chat_template"))
        special = {key: _token_text(settings[key]) for key in ("bos_token", "eos_token")
                   if settings.get(key)}
        opening = ""
        if counter is not None:  # "" through the post-processor: the tokens it adds, as text
            opening = "".join(counter.tokenizer.encode("", add_special_tokens=True).tokens)
        return cls(template if isinstance(template, str) else None, special, opening=opening)

    def render(self, question: str, passages: list[Passage]) -> str:
        message = user_message(question, passages, self.question_first)
        if self.template is None:
            return f"{self.opening}{self.system}\n\n{message}\nAnswer:"
        messages = [{"role": "system", "content": self.system},
                    {"role": "user", "content": message}]
        return self.template.render(messages=messages, add_generation_prompt=True,
                                    **self.special_tokens)


def _token_text(value: object) -> str:
    return value.get("content", "") if isinstance(value, dict) else str(value)


def _raise(message: str) -> None:
    raise BadInput(f"the release's chat template refused the prompt: {message}")


@dataclass(frozen=True)
class Fitted:
    prompt: str
    texts: list[str]  # the passages' texts as placed: whole, except perhaps the last, cut short
    tokens: int


def fit(question: str, passages: list[Passage], render: Render, counter: TokenCounter,
        budget: int) -> Fitted:
    """The prompt with as many ranked passages as `budget` prompt tokens hold."""
    alone = counter.count(render(question, []))
    if alone > budget:
        raise BadInput(f"the question takes {alone} prompt tokens with the chat template, more "
                       f"than the {budget} the model's context leaves beside the answer; "
                       "shorten it or lower --max-new-tokens.")
    placed: list[Passage] = []

    def fits(candidate: Passage) -> int | None:
        tokens = counter.count(render(question, [*placed, candidate]))
        return tokens if tokens <= budget else None

    for heading, text in passages:
        if fits((heading, text)) is not None:
            placed.append((heading, text))
            continue
        low, high = 0, counter.count(text)  # the longest prefix that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if fits((heading, counter.cut(text, middle))) is not None:
                low = middle
            else:
                high = middle - 1
        if low > 0:
            placed.append((heading, counter.cut(text, low)))
        break
    prompt = render(question, placed)
    return Fitted(prompt, [text for _, text in placed], counter.count(prompt))


def context_need(question: str, passages: list[Passage], k: int, answer_tokens: int,
                 render: Render, counter: TokenCounter) -> int:
    """The context a release needs never to cut a prompt: the template around `question` (the
    longest asked) and the `k` longest passages, plus the tokens the answer may take."""
    longest = sorted(passages, key=lambda p: counter.count(render("", [p])), reverse=True)[:k]
    return counter.count(render(question, longest)) + answer_tokens
