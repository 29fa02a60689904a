"""PDF extraction measured on manuals nobody here wrote: `python -m bench.pdf_extract PAIR…`.

Each PAIR is `name=manual.pdf[.gz],edition.html` (Debian ships several manuals in both, e.g.
`bzip2=/usr/share/doc/bzip2/manual.pdf.gz,/usr/share/doc/bzip2/manual.html`). Prints one JSON
line per library and manual: pages/s in one process, and word fidelity against the HTML edition
(F1 of word counts, and of word-pair counts, which an out-of-order column or a split word
lowers); the libraries are pypdfium2, pypdf and pdfminer.six raw, then edgerag's reader (PDFium
plus the cleaning of `pipeline/retrieval/pdf.py`). Then one line per worker count for
`readers.read_all` over all the PDFs together, child processes included: pages/s and MB/s.
pypdf and pdfminer.six are not project dependencies: those rows are left out when absent.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import tempfile
import time
import unicodedata
from collections import Counter
from pathlib import Path

from pipeline.retrieval import pdf, readers, webpage


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def _pairs(words: list[str]) -> list[tuple[str, str]]:
    return list(zip(words, words[1:], strict=False))


def _f1(a: list, b: list) -> float:
    shared = sum((Counter(a) & Counter(b)).values())
    return round(2 * shared / max(1, len(a) + len(b)), 3)


def _pypdfium2(path: Path) -> list[str]:
    import pypdfium2

    document = pypdfium2.PdfDocument(str(path))
    return [document[i].get_textpage().get_text_bounded() for i in range(len(document))]


def _pypdf(path: Path) -> list[str]:
    import pypdf

    return [page.extract_text() for page in pypdf.PdfReader(str(path)).pages]


def _pdfminer(path: Path) -> list[str]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LTTextContainer

    return ["".join(e.get_text() for e in page if isinstance(e, LTTextContainer))
            for page in extract_pages(str(path))]


def _edgerag(path: Path) -> list[str]:
    found = pdf.read_pdf(str(path))
    ends = [*found.page_starts[1:], len(found.text)]
    return [found.text[a:b] for a, b in zip(found.page_starts, ends, strict=True)]


LIBRARIES = {"pypdfium2": _pypdfium2, "pypdf": _pypdf, "pdfminer.six": _pdfminer,
             "edgerag (pypdfium2 + cleaning)": _edgerag}


def _unpacked(path: Path, folder: Path, name: str) -> Path:
    if path.suffix != ".gz":
        return path
    out = folder / f"{name}.pdf"
    out.write_bytes(gzip.decompress(path.read_bytes()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pdf_extract",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="name=manual.pdf[.gz],edition.html")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgerag-pdf-") as tmp:
        folder = Path(tmp)
        pdfs = []
        for pair in args.pairs:
            name, paths = pair.split("=", 1)
            pdf_path, html_path = (Path(p) for p in paths.split(","))
            pdf_path = _unpacked(pdf_path, folder, name)
            pdfs.append(pdf_path)
            reference = _words(webpage.html_to_text(html_path.read_text(errors="replace")))
            for library, extract in LIBRARIES.items():
                try:
                    started = time.perf_counter()
                    pages = extract(pdf_path)
                except ImportError:
                    continue
                seconds = time.perf_counter() - started
                words = _words("\n".join(pages))
                print(json.dumps({
                    "manual": name, "library": library, "pages": len(pages),
                    "pages_per_s": round(len(pages) / seconds, 1),
                    "word_f1": _f1(words, reference),
                    "word_pair_f1": _f1(_pairs(words), _pairs(reference))}), flush=True)
        files = [(p.name, p) for p in pdfs]
        megabytes = sum(p.stat().st_size for p in pdfs) / 2**20
        for workers in (1, 2):
            started = time.perf_counter()
            found = readers.read_all(files, workers=workers)
            seconds = time.perf_counter() - started
            pages = sum(len(r.page_starts) for r in found)
            print(json.dumps({"read_all_workers": workers, "files": len(files), "pages": pages,
                              "megabytes": round(megabytes, 2), "wall_s": round(seconds, 2),
                              "pages_per_s": round(pages / seconds, 1),
                              "mb_per_s": round(megabytes / seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()
