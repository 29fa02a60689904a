"""Cut the corpus (params `corpus`) into chunks that fit the embedder: data/corpus/chunks.jsonl."""

from pipeline import artifacts, config, errors, layout
from pipeline.retrieval import corpus
from stages import output

STAGE = "prepare_corpus"


def main() -> None:
    cfg = config.load()
    source = artifacts.require(layout.EMBEDDER_SOURCE)
    with output(STAGE, cfg, inputs=[source], byte_identical=True) as out:
        documents, skipped = corpus.documents(cfg.corpus)
        chunks = corpus.chunk_corpus(documents, cfg.corpus, source / layout.TOKENIZER,
                                     cfg.embedder.max_seq_len)
        corpus.write_chunks(out / layout.CHUNKS, chunks)
        out.note("documents", len(documents))
        out.note("chunks", len(chunks))
        out.note("skipped_files", skipped)


if __name__ == "__main__":
    errors.run(main)
