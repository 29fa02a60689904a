"""Cut the corpus (params `corpus`) into chunks that fit the embedder: data/corpus/chunks.jsonl."""

from pipeline import artifacts, config, errors
from pipeline.retrieval import corpus, embedder
from stages import output

STAGE, OUT = "prepare_corpus", "data/corpus"


def main() -> None:
    cfg = config.load()
    source = artifacts.require("data/embedder_src")
    with output(STAGE, OUT, cfg, inputs=[source], byte_identical=True) as out:
        documents, skipped = corpus.documents(cfg.corpus)
        chunks = corpus.chunk_corpus(documents, cfg.corpus, source / embedder.TOKENIZER,
                                     cfg.embedder.max_seq_len)
        corpus.write_chunks(out / corpus.CHUNKS, chunks)
        out.note("documents", len(documents))
        out.note("chunks", len(chunks))
        out.note("skipped_files", skipped)


if __name__ == "__main__":
    errors.run(main)
