"""Four Debian manuals in both editions, laid out as corpus folders: `python -m
bench.corpora.debian_manuals OUT [--edition html|pdf|both]`.

The manuals every Debian machine installs in HTML and PDF (issue 41 item 6): bzip2's manual,
fontconfig's user guide, Nettle's reference and the shared-mime-info specification, from
/usr/share/doc. Layout (`both`, the default):

    OUT/html/bzip2/manual.html                OUT/pdf/bzip2/manual.pdf
    OUT/html/fontconfig/fontconfig-user.html  OUT/pdf/fontconfig/fontconfig-user.pdf
    OUT/html/nettle-dev/nettle.html           OUT/pdf/nettle-dev/nettle.pdf
    OUT/html/shared-mime-info/shared-mime-info-spec/(index, x34, x497, b518).html
                                              OUT/pdf/shared-mime-info/shared-mime-info-spec.pdf

HTML files are copied, `.pdf.gz` files decompressed. Each edition is measured on its own
(`corpus=dir corpus.path=OUT/html`, then `OUT/pdf`), so the sources in
`questions/manuals.jsonl` are relative to the EDITION folder: `bzip2/manual.html` and
`bzip2/manual.pdf`; every question names both, and only the edition in the corpus counts.
Each edition folder is written to a temporary sibling and renamed into place, so a folder is
either complete or absent. Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path

DOC = Path("/usr/share/doc")
# package folder: (HTML files or one folder of them, the PDF or .pdf.gz)
MANUALS = {
    "bzip2": ("manual.html", "manual.pdf.gz"),
    "fontconfig": ("fontconfig-user.html", "fontconfig-user.pdf.gz"),
    "nettle-dev": ("nettle.html", "nettle.pdf.gz"),
    "shared-mime-info": ("shared-mime-info-spec.html", "shared-mime-info-spec.pdf"),
}
EDITIONS = ("html", "pdf")


def _html(pkg: str, name: str, into: Path) -> None:
    src = DOC / pkg / name
    (into / pkg).mkdir(parents=True, exist_ok=True)
    if src.is_dir():  # a multi-page edition: the folder without its `.html` suffix
        shutil.copytree(src, into / pkg / src.stem)
    else:
        shutil.copy2(src, into / pkg / name)


def _pdf(pkg: str, name: str, into: Path) -> None:
    src = DOC / pkg / name
    (into / pkg).mkdir(parents=True, exist_ok=True)
    if name.endswith(".gz"):
        with gzip.open(src, "rb") as packed, open(into / pkg / name[:-3], "wb") as out:
            shutil.copyfileobj(packed, out)
    else:
        shutil.copy2(src, into / pkg / name)


def lay_out(out: Path, edition: str) -> Path:
    """Write one edition folder, `out/<edition>`, atomically; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    final = out / edition
    tmp = Path(tempfile.mkdtemp(prefix=f".{edition}-", dir=out))
    try:
        for pkg, (html, pdf) in MANUALS.items():
            (_html if edition == "html" else _pdf)(pkg, html if edition == "html" else pdf, tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{edition}-old-", dir=out))
            final.rename(old / edition)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def main(out: Path, edition: str = "both") -> list[Path]:
    missing = [str(DOC / pkg / name) for pkg, names in MANUALS.items() for name in names
               if not (DOC / pkg / name).exists()]
    if missing:
        raise SystemExit(f"missing manuals (install the packages): {', '.join(missing)}")
    return [lay_out(Path(out), e) for e in (EDITIONS if edition == "both" else (edition,))]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--edition", choices=("html", "pdf", "both"), default="both")
    args = parser.parse_args()
    for folder in main(args.out, args.edition):
        print(folder)
