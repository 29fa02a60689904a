# Two commands a new user runs: `make release` and `make test`. Everything else is plumbing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup release test test-fast test-slow lint clean-data

setup: $(STAMP)

# Reinstall only when the pinned dependencies change; otherwise `make setup` is a no-op.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Builds whatever params.yaml says (the committed default unless you ran `edgerag configure`),
# then promotes it to releases/default/ (registered with DVC, tagged default@vX.Y.Z; pass
# PROMOTE_ARGS=--no-tag to skip the git commit and tag) and verifies it. The recipe itself is
# `edgerag release` (pipeline/release/recipe.py), which the CI test runs on a fresh clone.
# CORPUS=~/docs releases your own folder (PDF, Word, Markdown, HTML, text; no question set needed:
# evaluate_rag then judges retrieval on probes derived from it), configuring that first.
PROMOTE_ARGS ?=
CORPUS ?=
release: $(STAMP)
	$(VENV)/bin/edgerag release $(PROMOTE_ARGS) $(if $(CORPUS),corpus=dir corpus.path=$(abspath $(CORPUS)))

# The Node packages the portability test opens a release with (tests/node/package-lock.json);
# without npm the test skips and says so.
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix tests/node --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: tests/test_portability.py will skip"; fi

# pytest-xdist workers (tests/conftest.py builds the shared tiny build once and starts it first);
# capped at 4 because each worker may build a tiny model at once (measured with 2 only).
TEST_WORKERS ?= $(shell python3 -c "import os; print(min(4, os.cpu_count() or 1))")
XDIST := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q --durations=20 $(XDIST) $(if $(EDGERAG_SLOW),,-m "not slow")

# The quick local loop: unit tests only, no end-to-end build (CI runs `make test`).
test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow and not e2e"

test-slow: $(STAMP)
	EDGERAG_SLOW=1 $(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline stages tests
