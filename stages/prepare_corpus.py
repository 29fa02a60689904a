"""Cut the corpus (params `corpus`) into chunks that fit the embedder: data/corpus/chunks.jsonl.

A folder's summary line (`read 41 files: 30 pdf, …; skipped 3: 2 scanned-only, 1 encrypted`) is
printed, and its run record lists every skipped file with its reason, the encoding of each text
file that was not UTF-8 and each PDF's pages without a text layer."""

from pipeline import artifacts, errors, layout, params_file
from pipeline.progress import log
from pipeline.retrieval import corpus
from stages import output

STAGE = "prepare_corpus"


def main() -> None:
    cfg = params_file.load()
    source = artifacts.require(layout.EMBEDDER_SOURCE)
    with output(STAGE, cfg, inputs=[source], byte_identical=True) as out:
        documents, report = corpus.documents(cfg.corpus)
        chunks = corpus.chunk_corpus(documents, cfg.corpus, source / layout.TOKENIZER,
                                     cfg.embedder.max_seq_len)
        corpus.write_chunks(out / layout.CHUNKS, chunks)
        out.note("documents", len(documents))
        out.note("chunks", len(chunks))
        out.note("skipped_files", report.counts())
        if cfg.corpus.kind == "dir":
            log(report.summary())
            out.timings.update(report.record())


if __name__ == "__main__":
    errors.run(main)
