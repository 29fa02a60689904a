"""Promote and ask: the release rule, context budgeting, the bundle's integrity, the registry, and
a real tiny release answering with sockets disabled."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import socket
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import artifacts, bundle, cli
from pipeline.config import ReleaseConfig
from pipeline.device import ask, prompt
from pipeline.errors import BadInput
from pipeline.release import promote, registry
from tests.conftest import REPO, edgerag_script, write_tiny_release

RULE = ReleaseConfig(name="default", max_ppl_delta_pct=10.0, min_recall_at_10=0.9)
# Role-tagged turns: the shape of Llama-family templates, in a form the 512-token test BPE keeps
# short enough for the tiny model's 128-token context.
PLAIN_TURNS = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
               "{% if add_generation_prompt %}assistant:{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _candidate(run, pte_bytes, delta, recall, hit=1.0, grounded=1.0):
    return promote.Candidate(run, {"llm.pte_bytes": pte_bytes, "llm.ppl_delta_pct": delta,
                                   "retrieval.recall_at_10": recall, "rag.hit_at_k": hit,
                                   "rag.grounded": grounded})


# --- the release rule ---------------------------------------------------------------------------

def test_rule_picks_the_smallest_pte_within_the_bounds():
    runs = [_candidate("workspace", 900, 4.0, 0.95), _candidate("q-small", 500, 12.0, 0.99),
            _candidate("q-mid", 700, 9.9, 0.91), _candidate("q-bad-index", 600, 1.0, 0.5)]
    assert promote.select(runs, RULE).run == "q-mid"
    tie = [_candidate("workspace", 700, 1.0, 1.0), _candidate("same", 700, 1.0, 1.0)]
    assert promote.select(tie, RULE).run == "workspace"


def test_the_rule_can_pick_the_best_answers_instead_of_the_smallest_pte():
    """Two models within the bounds (say SmolLM2 and a larger Gemma 3): by size the smaller
    ships; with pick_by an answer metric, the better answers do, size breaking a tie."""
    small = promote.Candidate("smollm2", {**_candidate("s", 100, 1.0, 1.0).metrics,
                                          "rag.answer_f1": 0.25})
    large = promote.Candidate("gemma3", {**_candidate("g", 300, 1.0, 1.0).metrics,
                                         "rag.answer_f1": 0.31})
    larger = promote.Candidate("gemma3-8bit", {**_candidate("g", 400, 1.0, 1.0).metrics,
                                               "rag.answer_f1": 0.31})
    assert promote.select([small, large], RULE).run == "smollm2"
    by_answers = dataclasses.replace(RULE, pick_by="rag.answer_f1")
    assert promote.select([small, larger, large], by_answers).run == "gemma3"
    with pytest.raises(BadInput, match=r"release.pick_by=rag.answer_f1 and experiment q has no "
                                       r"rag.answer_f1; run evaluate_rag for it"):
        promote.select([small, _candidate("q", 50, 1.0, 1.0)], by_answers)
    with pytest.raises(BadInput, match=r"release.pick_by='speed' is not one of llm.pte_bytes, "):
        promote.select([small], dataclasses.replace(RULE, pick_by="speed"))


def test_a_run_missing_the_rule_is_named_with_the_bound_it_misses():
    with pytest.raises(BadInput, match=r"workspace build misses it, llm.ppl_delta_pct=39.4 is "
                                       r"above release.max_ppl_delta_pct=10 \(and 1 other run "
                                       "misses it too"):
        promote.select([_candidate("workspace", 1, 39.4, 1.0), _candidate("e", 1, 1, 0.2)], RULE)
    assert "recall_at_10=0.5 is below" in promote.missed_bound(RULE, _candidate(
        "x", 1, 0.0, 0.5).metrics)
    strict = ReleaseConfig(min_rag_hit_at_k=0.6, min_rag_grounded=0.3)
    assert promote.missed_bound(strict, _candidate("x", 1, 0.0, 1.0, hit=0.5).metrics) == \
        "rag.hit_at_k=0.5 is below release.min_rag_hit_at_k=0.6"
    assert promote.missed_bound(strict, _candidate("x", 1, 0.0, 1.0, grounded=0.2).metrics) == \
        "rag.grounded=0.2 is below release.min_rag_grounded=0.3"
    assert promote.missed_bound(RULE, {"llm.pte_bytes": 1}) == \
        "it has no llm.ppl_delta_pct metric"
    with pytest.raises(BadInput, match="no built run to promote"):
        promote.select([], RULE)


def test_sweep_results_give_the_finished_experiments(tmp_path):
    table = tmp_path / "sweeps" / "s1" / "results.csv"
    table.parent.mkdir(parents=True)
    table.write_text(
        "experiment,status,overrides,llm.pte_bytes,llm.ppl_delta_pct,retrieval.recall_at_10,"
        "rag.hit_at_k,rag.grounded\n"
        "s1-0,ok,quant=8da4w_g32,1000,5.5,0.95,0.7,0.5\n"
        "s1-1,failed,quant=qnn_16a4w,,,,,\n"
        "s1-2,ok,quant=4w_g32,800,nan,0.97,0.7,0.5\n")
    found = promote.sweep_candidates(tmp_path)
    assert [c.run for c in found] == ["s1-0", "s1-2"]
    assert found[0].metrics == {"llm.pte_bytes": 1000.0, "llm.ppl_delta_pct": 5.5,
                                "retrieval.recall_at_10": 0.95, "rag.hit_at_k": 0.7,
                                "rag.grounded": 0.5}
    assert promote.select(found, RULE).run == "s1-0"  # s1-2 has no perplexity delta


# --- fitting the prompt into the context ----------------------------------------------------------

@pytest.fixture(scope="module")
def counter(tiny_tokenizer):
    _, folder = tiny_tokenizer
    return prompt.TokenCounter.from_file(folder / "tokenizer.json")


@pytest.fixture(scope="module")
def chat():
    return prompt.ChatFormat(CHATML, {})


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 400), max_size=6), budget=st.integers(40, 400),
       question_words=st.integers(1, 30))
def test_fitted_prompt_never_exceeds_the_budget(counter, chat, lengths, budget, question_words):
    from pydoc_data.topics import topics

    text = topics["assert"] + topics["for"]
    passages = [(f"pydoc:{n}", text[:length]) for n, length in enumerate(lengths)]
    question = " ".join(["statement"] * question_words)
    try:
        fitted = prompt.fit(question, passages, chat.render, counter, budget)
    except BadInput:
        assert counter.count(chat.render(question, [])) > budget
        return
    assert fitted.tokens == counter.count(fitted.prompt) <= budget
    assert len(fitted.texts) <= len(passages)
    for (_, whole), placed in zip(passages, fitted.texts, strict=False):
        assert whole.startswith(placed)
    cut = [i for i, placed in enumerate(fitted.texts) if placed != passages[i][1]]
    assert cut in ([], [len(fitted.texts) - 1])  # only the last placed passage may be cut


def test_the_context_need_holds_the_k_longest_chunks_whole_and_one_token_less_does_not(
        counter, chat):
    from pydoc_data.topics import topics

    text = topics["assert"]
    passages = [(f"pydoc:{n}", text[: 40 * n]) for n in range(1, 7)]  # longest last
    question, k, answer = "what does assert do when optimizing", 3, 16
    need = prompt.context_need(question, passages, k, answer, chat.render, counter)
    longest = passages[-k:][::-1]
    assert need == counter.count(chat.render(question, longest)) + answer
    whole = prompt.fit(question, longest, chat.render, counter, need - answer)
    assert whole.texts == [text for _, text in longest]
    short = prompt.fit(question, longest, chat.render, counter, need - answer - 1)
    assert short.texts != whole.texts  # the last chunk is cut


def test_a_question_that_alone_overflows_is_refused(counter, chat):
    with pytest.raises(BadInput, match=r"the question takes \d+ prompt tokens .* lower "
                                       "--max-new-tokens"):
        prompt.fit("why " * 200, [("a", "text")], chat.render, counter, 64)


def test_chat_format_falls_back_to_plain_text_without_a_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "chat_template": "{{ bos_token }}{{ messages[0]"
                                                           "['content'] }}"}))
    from_config = prompt.ChatFormat.from_files(tmp_path / "none.jinja",
                                               tmp_path / "tokenizer_config.json")
    assert from_config.render("q?", []).startswith("<s>" + prompt.SYSTEM)
    plain = prompt.ChatFormat.from_files(tmp_path / "none.jinja", tmp_path / "none.json")
    assert plain.render("q?", [("doc", "body")]) == (
        f"{prompt.SYSTEM}\n\nSources:\n[1] doc\nbody\n\nQuestion: q?\nAnswer:")


def test_the_question_can_be_asked_before_the_sources_as_well_as_after():
    """A layout bench.answer_levers measures (`ChatFormat.question_first`); off by default."""
    chat = prompt.ChatFormat(None, {})
    plain = chat.render("Why?", [("h", "text")])
    assert plain.count("Question: Why?") == 1 and plain.index("Sources:") < plain.index("Why?")
    chat.question_first = True
    both = chat.render("Why?", [("h", "text")])
    assert both.count("Question: Why?") == 2 and both.index("Why?") < both.index("Sources:")


def test_a_plain_prompt_opens_with_what_the_tokenizer_puts_before_every_text(tmp_path):
    """A pretrained model's tokenizer (Gemma 3's) adds <bos> in its post-processor; the runner
    adds nothing, so the plain prompt carries it as text (the runner's tokenizer reads it as
    the special token)."""
    from tokenizers import Tokenizer, models, processors

    tokenizer = Tokenizer(models.WordLevel({"<bos>": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.add_special_tokens(["<bos>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                             special_tokens=[("<bos>", 0)])
    counter = prompt.TokenCounter(tokenizer)
    opened = prompt.ChatFormat.from_files(tmp_path / "none.jinja", tmp_path / "none.json",
                                          counter)
    assert opened.render("q?", []).startswith("<bos>" + prompt.SYSTEM)
    tokenizer.post_processor = None
    assert prompt.ChatFormat.from_files(tmp_path / "none.jinja", tmp_path / "none.json",
                                        counter).render("q?", []).startswith(prompt.SYSTEM)


# --- the bundle and bad releases ------------------------------------------------------------------

def _fake_run(metrics, pte=b"pte-bytes"):
    """Run artifacts in the current directory with real manifests and input chain (stages
    record inputs by their relative paths), small stand-in files."""
    def make(folder, files, inputs=()):
        with artifacts.writer(folder, stage=folder, config={},
                              inputs=[artifacts.verify(i) for i in inputs]) as out:
            for name, data in files.items():
                (out / name).write_bytes(data)

    make("data/lowered", {"llm.pte": pte, "tokenizer.json": b"{}", "chat_template.jinja": b"x"})
    make("data/embedder", {"embedder.pte": b"emb", "tokenizer.json": b"{}"})
    make("data/index", {"index.usearch": b"idx", "chunks.jsonl": b"{}\n",
                        "chunks.sqlite": b"db"})
    make("data/eval_llm", {"metrics.json": b"{}"}, ["data/lowered"])
    make("data/eval_rag", {"metrics.json": b"{}"}, ["data/lowered", "data/embedder",
                                                    "data/index"])
    make("data/eval", {"metrics.json": json.dumps(metrics).encode()},
         ["data/eval_llm", "data/eval_rag", "data/index", "data/embedder"])


GOOD = {"llm": {"pte_bytes": 9, "ppl_delta_pct": 3.0},
        "retrieval": {"recall_at_10": 1.0, "embed_cosine_min": 1.0},
        "rag": {"hit_at_k": 0.8, "grounded": 0.6, "context_cut_rate": 0.0}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git + DVC project with the repo's params and dvc.yaml and a fake finished build."""
    monkeypatch.chdir(tmp_path)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for args in (["git", "init", "-q"], ["git", "config", "user.name", "edgerag test"],
                 ["git", "config", "user.email", "test@example.invalid"],
                 [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "base"]):
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)
    _fake_run(GOOD)
    return tmp_path


def _git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


def test_promote_writes_the_bundle_registers_and_tags(project):
    released = promote.promote(project)
    release = project / "releases/default"
    assert released["tag"] == "default@v0.0.1" and released["new_tag"]
    manifest = artifacts.verify(release).manifest
    assert set(manifest["files"]) == set(bundle.FILES) | {"chat_template.jinja"}
    assert manifest["stage"] == "promote" and manifest["format_version"] == 1
    assert manifest["config"]["release"]["name"] == "default"
    assert manifest["notes"]["metrics"] == GOOD and manifest["notes"]["run"] == "workspace"
    assert manifest["notes"]["git_commit"] == _git(project, "rev-parse", "HEAD~1").strip()
    assert (release / "llm.pte").read_bytes() == b"pte-bytes"
    dvc_yaml = (project / "dvc.yaml").read_text()
    assert dvc_yaml.startswith((REPO / "dvc.yaml").read_text())  # comments and layout kept
    assert "artifacts:\n  default:\n    path: releases/default\n    type: model" in dvc_yaml
    assert _git(project, "cat-file", "-t", "default@v0.0.1").strip() == "tag"  # annotated
    assert "releases/default.dvc" in _git(project, "show", "--name-only", "default@v0.0.1")
    assert promote.promote(project)["tag"] == "default@v0.0.1"  # same build: same version
    _fake_run(GOOD, pte=b"a smaller build")
    assert promote.promote(project)["tag"] == "default@v0.0.2"


def test_promote_refuses_what_it_cannot_vouch_for(project, capsys):
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text() + "# edit\n")
    with pytest.raises(BadInput, match="dvc.yaml has uncommitted changes; .* --no-tag"):
        promote.promote(project)
    with pytest.raises(BadInput, match="not a valid release name"):
        promote.promote(project, name="../up", tag=False)
    with artifacts.writer(project / "data/lowered", stage="lower", config={}) as out:
        (out / "llm.pte").write_bytes(b"rebuilt after the evaluation")
        (out / "tokenizer.json").write_bytes(b"{}")
    with pytest.raises(BadInput, match="data/eval_llm was measured on another data/lowered"):
        promote.promote(project, tag=False)
    _fake_run({**GOOD, "llm": {"pte_bytes": 9, "ppl_delta_pct": 80.0}})
    with pytest.raises(SystemExit) as exit_:
        cli.main(["promote", "--no-tag"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "llm.ppl_delta_pct=80 is above" in err
    assert not (project / "releases/default").exists()


def test_tampered_or_missing_release_exits_2_naming_the_file(project, capsys):
    promote.promote(project, tag=False)
    release = project / "releases/default"
    with open(release / "chunks.jsonl", "a") as handle:
        handle.write("{}\n")
    for argv, named in ((["ask", "q?", "--release", str(release)], "chunks.jsonl does not match"),
                        (["ask", "q?", "--release", "nowhere"], "nowhere is not a release")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and err.count("\n") == 0 and named in err, err


def test_add_artifact_keeps_comments_and_replaces_its_entry(tmp_path):
    text = "# top comment\nstages:\n  a:\n    cmd: echo  # why\n    deps:\n      - x\n"
    (tmp_path / "dvc.yaml").write_text(text)
    registry.add_artifact(tmp_path, "default", "first")
    registry.add_artifact(tmp_path, "default", "second")
    assert (tmp_path / "dvc.yaml").read_text() == text + (
        "artifacts:\n  default:\n    path: releases/default\n    type: model\n    desc: second\n")


# --- a real tiny release, asked with the network disabled ----------------------------------------

@pytest.fixture(scope="module")
def tiny_release(tiny_cfg, tiny_ptes, tiny_embedder, tiny_embedder_source, tiny_tokenizer,
                 tmp_path_factory):
    """The tiny Llama (fp32 .pte), the tiny embedder .pte, and an index of three pydoc topics,
    cut in token windows: the tiny .pte's 128-token context holds no section chunk's heading
    path with its text beside the question, so ask would have no source to test."""
    windows = dataclasses.replace(tiny_cfg, corpus=dataclasses.replace(tiny_cfg.corpus,
                                                                       chunking="tokens"))
    return write_tiny_release(
        tmp_path_factory.mktemp("releases") / "tiny", tmp_path_factory.mktemp("run"),
        windows, tiny_ptes["fp32"], tiny_tokenizer[1], tiny_embedder[0], tiny_embedder_source,
        ("pydoc:assert", "pydoc:for", "pydoc:with"), GOOD, PLAIN_TURNS)


def _refuse_network(*_args, **_kwargs):
    raise OSError("edgerag test: this process may not open a socket")


def test_ask_answers_from_the_release_with_sockets_disabled(tiny_release, monkeypatch, capsys):
    monkeypatch.setattr(socket, "socket", _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)
    ask.main("What does the assert statement do?", str(tiny_release), 3, 8, as_json=True)
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["answer"], str) and answer["timings"]["generated_tokens"] >= 1
    chunks = [json.loads(line) for line in (tiny_release / "chunks.jsonl").open()]
    assert 1 <= len(answer["sources"]) <= 3
    for source in answer["sources"]:
        chunk = next(c for c in chunks if c["source"] == source["source"]
                     and c["start"] == source["start"])
        assert source["start"] < source["end"] <= chunk["end"]
    timings = answer["timings"]
    assert timings["prompt_tokens"] == timings["runner_prompt_tokens"]  # we count as it encodes
    assert timings["prompt_tokens"] + 8 <= 128  # the tiny .pte's max_seq_len
    assert timings["retrieval_ms"] > 0 and timings["decode_tok_s"] >= 0


def test_ask_opens_the_index_mapped_and_searches_as_wide_as_the_build_measured(tiny_release):
    from pipeline.device.ask import Assistant

    index = Assistant.from_release(tiny_release).retriever.index
    assert index.expansion_search == 96 and index.memory_usage < index.serialized_length


def test_an_ask_session_survives_its_release_being_truncated_under_it(tiny_release, tmp_path):
    import shutil

    release = tmp_path / "release"
    shutil.copytree(tiny_release, release)
    assistant = ask.Assistant.from_release(release)
    for name in ("llm.pte", "embedder.pte", "index.usearch", "chunks.sqlite"):
        (release / name).write_bytes(b"")  # replaced or cut while the session runs
    answer = assistant.ask("How does a for loop work?", 2, 4, lambda _piece: None)
    assert answer.sources and answer.timings["generated_tokens"] >= 1
    with pytest.raises(BadInput, match=r"release/\w+\.\w+ does not match its sha256"):
        ask.Assistant.from_release(release)  # a new session is refused, naming the file


def _rehashed(release):
    """Rewrite the manifest's table over the files as they are now (a careless re-publish)."""
    manifest = json.loads((release / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        entry.update(sha256=artifacts.sha256_file(release / name),
                     bytes=(release / name).stat().st_size)
    (release / "manifest.json").write_text(json.dumps(manifest))


def test_a_rehashed_release_whose_files_do_not_belong_together_is_refused_at_open(
        tiny_release, tmp_path):
    import shutil
    import sqlite3

    release = tmp_path / "release"
    shutil.copytree(tiny_release, release)
    with sqlite3.connect(release / "chunks.sqlite") as db:
        key = db.execute("SELECT key FROM chunks LIMIT 1").fetchone()[0]
        db.execute("DELETE FROM chunks WHERE key = ?", (key,))
    db.close()
    _rehashed(release)
    assert artifacts.verify(release)  # the manifest is consistent with the files
    with pytest.raises(BadInput, match=r"chunks.sqlite holds \d+ chunks, chunks.jsonl \d+, not "
                                       "the same ones"):
        ask.Assistant.from_release(release)
    shutil.copyfile(tiny_release / "chunks.sqlite", release / "chunks.sqlite")
    (release / "chunks.sqlite").write_bytes((release / "chunks.sqlite").read_bytes()[:4096])
    _rehashed(release)
    with pytest.raises(BadInput, match="chunks.sqlite"):
        ask.Assistant.from_release(release)


def test_a_run_whose_model_has_no_chat_template_is_asked_with_the_plain_prompt(tiny_release):
    """evaluate_rag reads the run's own files, where a pretrained model (Gemma 3 270M) has no
    chat_template.jinja or tokenizer_config.json at all: the plain prompt, not a KeyError."""
    from pipeline.config import AbstainConfig, RetrievalConfig

    files = {name: tiny_release / name for name in bundle.FILES}
    assistant = ask.Assistant(files, RetrievalConfig(abstain=AbstainConfig(below=0.0)))
    assert assistant.chat.template is None
    answer = assistant.ask("How does a for loop work?", 2, 4, lambda _p: None)
    assert answer.timings["generated_tokens"] >= 1


def test_ask_streams_one_piece_per_generated_token(tiny_release):
    assistant = ask.Assistant.from_release(tiny_release)
    pieces = []
    answer = assistant.ask("How does a for loop work?", 2, 6, pieces.append)
    assert "".join(pieces) == answer.answer
    # a piece ending inside a character is held for the next one (`pieces.PieceDecoder`)
    assert 1 <= len(pieces) <= answer.timings["generated_tokens"]


def test_ask_says_when_the_context_could_not_hold_every_retrieved_chunk(tiny_release, capsys):
    assistant = ask.Assistant.from_release(tiny_release)
    whole = {"retrieved": 2, "placed": 2, "last_cut": False}
    assert not ask.Answer("q", "a", [], [], {}, False, whole).context_cut
    assistant.retriever.cfg.prompt_chunks = 3
    tight = assistant.ask("How does a for loop work?", 4, 4, lambda _p: None)  # 128-token .pte
    assert tight.context_cut and tight.fit["retrieved"] == 3
    assert tight.fit["placed"] < 3 or tight.fit["last_cut"]
    # every retrieved chunk is a source; only those placed were read by the LLM
    assert len(tight.sources) == 4
    assert [s.in_prompt for s in tight.sources] == [n < tight.fit["placed"] for n in range(4)]
    ask._print_sources(tight)
    out = capsys.readouterr().out
    assert "chunks meant for it" in out
    assert out.count(", not in the prompt") == 4 - tight.fit["placed"]
    assert json.loads(tight.as_json())["fit"] == tight.fit


def test_the_prompt_reads_the_first_prompt_chunks_of_the_sources(tiny_release):
    assistant = ask.Assistant.from_release(tiny_release)
    assistant.retriever.cfg.prompt_chunks = 1
    answer = assistant.ask("How does a for loop work?", 3, 4, lambda _p: None)
    assert [s.in_prompt for s in answer.sources] == [True, False, False]
    assert answer.fit["retrieved"] == 1 and answer.fit["placed"] == 1
    assistant.retriever.cfg.prompt_chunks = 3
    wider = assistant.ask("How does a for loop work?", 3, 4, lambda _p: None)
    assert [s.source for s in wider.sources] == [s.source for s in answer.sources]
    assert wider.fit["retrieved"] == 3 and answer.fit["retrieved"] == 1


def test_ask_streams_then_lists_sources_and_reads_stdin(tiny_release, monkeypatch, capsys):
    ask.main("How does a for loop work?", str(tiny_release), 2, 4, as_json=False)
    out = capsys.readouterr().out
    assert "\n\nSources:\n[1] pydoc:" in out and ", characters " in out
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\n\nsecond question\n"))
    ask.main(None, str(tiny_release), 2, 4, as_json=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["question"] for line in lines] == ["first question",
                                                                "second question"]
    with pytest.raises(BadInput, match="leaves no room for a prompt"):
        ask.main("q", str(tiny_release), 2, 500, as_json=True)


def test_a_bad_question_is_refused_and_the_stdin_session_goes_on(tiny_release, monkeypatch,
                                                                 capsys):
    lines = b"first question\n\xff\xfe not utf-8\n" + b"word " * 400 + b"\nlast question\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    assert ask.main(None, str(tiny_release), 2, 4, as_json=True) == 2
    captured = capsys.readouterr()
    answered = [json.loads(line)["question"] for line in captured.out.strip().splitlines()]
    assert answered == ["first question", "last question"]
    refusals = captured.err.strip().splitlines()
    assert refusals[0] == "edgerag: stdin line 2 is not valid UTF-8 text; ask in UTF-8."
    assert len(refusals) == 2 and refusals[1].startswith("edgerag: ")
    with pytest.raises(BadInput, match="the question is not valid UTF-8"):
        ask.main("caf\udce9?", str(tiny_release), 2, 4, as_json=True)


def test_ask_with_stdin_closed_or_a_bad_flag_says_which(tiny_release, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(BadInput, match="stdin is closed"):
        ask.main(None, str(tiny_release), 2, 4, as_json=True)
    with pytest.raises(BadInput, match=r"^--max-new-tokens=0 must be at least 1\.$"):
        ask.main("q", str(tiny_release), None, 0, as_json=True)
    with pytest.raises(BadInput, match=r"^--k=0 must be at least 1\.$"):
        ask.main("q", str(tiny_release), 0, 4, as_json=True)


def test_ask_into_a_reader_that_stops_early_exits_quietly(tiny_release):
    """`edgerag ask … | head -1`: the pipe closes while answers are still being written."""
    questions = "".join(f"What does the for statement do, take {n}?\n" for n in range(30))
    process = subprocess.Popen([edgerag_script(), "ask", "--release", str(tiny_release),
                                "--k", "2", "--max-new-tokens", "4"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(questions.encode())
    process.stdin.close()
    assert process.stdout.read(1)
    process.stdout.close()
    assert process.wait(timeout=300) == 0
    assert process.stderr.read() == b""


def test_an_unanswerable_question_is_refused_and_an_answerable_one_answered(tiny_release,
                                                                          capsys):
    from pipeline.device import abstain

    assistant = ask.Assistant.from_release(tiny_release)
    # The tiny embedder is random, so the rule here weighs the question's words alone.
    assistant.abstention = abstain.Rule(0.0, 0.0, 1.0, 0.0, threshold=0.5)
    refused = assistant.ask("Which conda channel ships numpy wheels?", 2, 4, lambda _p: None)
    assert refused.abstained and refused.answer == abstain.ABSTENTION
    assert refused.sources and refused.signals["coverage"] < 0.5  # the closest sources, shown
    assert "generated_tokens" not in refused.timings  # nothing was generated
    answered = assistant.ask("How does the for statement loop?", 2, 4, lambda _p: None)
    assert not answered.abstained and answered.timings["generated_tokens"] >= 1
    ask._print_sources(refused)
    assert "\nSources:\n[1] pydoc:" in capsys.readouterr().out


def test_the_rule_gates_on_loops_abstention_and_evidence_when_it_sets_them():
    metrics = {**_candidate("x", 1, 0.0, 1.0).metrics, "rag.repetition_rate": 0.3,
               "rag.abstain_recall": 0.9, "rag.evidence_hit_at_1": 0.5}
    strict = ReleaseConfig(max_rag_repetition_rate=0.2, min_rag_abstain_recall=0.8,
                           min_rag_evidence_hit_at_1=0.4)
    assert promote.missed_bound(strict, metrics) == (
        "rag.repetition_rate=0.3 is above release.max_rag_repetition_rate=0.2")
    assert promote.missed_bound(strict, {**metrics, "rag.repetition_rate": 0.1}) is None
    assert promote.missed_bound(strict, {**metrics, "rag.repetition_rate": 0.1,
                                         "rag.abstain_recall": 0.5}) == (
        "rag.abstain_recall=0.5 is below release.min_rag_abstain_recall=0.8")
    assert promote.missed_bound(RULE, _candidate("x", 1, 0.0, 1.0).metrics) is None  # unset


def test_a_release_whose_prompts_lost_chunks_is_refused_only_when_the_rule_asks():
    cut = {**_candidate("x", 1, 0.0, 1.0).metrics, "rag.context_cut_rate": 0.97}
    strict = ReleaseConfig(max_context_cut_rate=0.0)
    assert promote.missed_bound(strict, cut) == (
        "rag.context_cut_rate=0.97 is above release.max_context_cut_rate=0: its context is too "
        "short for its prompts")
    assert promote.missed_bound(strict, {**cut, "rag.context_cut_rate": 0.0}) is None
    assert promote.missed_bound(strict, _candidate("x", 1, 0.0, 1.0).metrics) == \
        "it has no rag.context_cut_rate metric"  # a run measured before the rate existed
    assert promote.missed_bound(RULE, cut) is None  # the default rule leaves it unchecked


def test_a_tiny_model_that_loops_is_cut_at_the_stop_rule(tiny_release):
    """The tiny random model repeats one token (`::::…`, no spaces to count words by): it is
    stopped, and since the run holds no letter, none of it is shown."""
    from pipeline.device.answer import WORDLESS

    assistant = ask.Assistant.from_release(tiny_release)
    pieces = []
    looped = assistant.ask("for", 1, 40, pieces.append)
    assert looped.repeated and looped.timings["generated_tokens"] < 40  # stopped, not run out
    assert "".join(pieces) == looped.answer == WORDLESS
