"""How a passage is cited: the source, its pages when it has any, its innermost section."""

from pipeline.retrieval.citation import cite


def test_a_pdf_passage_names_its_pages_and_section():
    assert (cite("manual.pdf", "manual.pdf › Usage › Log files", 37, 38)
            == "manual.pdf, p. 37–38, § Log files")


def test_one_page_is_one_number_and_no_pages_none():
    assert cite("manual.pdf", "", 5, 5) == "manual.pdf, p. 5"
    assert cite("manual.pdf", "", 5, None) == "manual.pdf, p. 5"
    assert cite("notes/build.md", "notes/build.md › Build") == "notes/build.md, § Build"
    assert cite("notes/build.md") == "notes/build.md"


def test_a_heading_that_is_only_the_source_is_not_a_section():
    assert cite("pydoc:if", "pydoc:if") == "pydoc:if"
