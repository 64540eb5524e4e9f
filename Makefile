# The two commands a newcomer needs: `make demo` and `make test`. Both build the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lesionlab-installed

.PHONY: demo test test-fast lint audit browser postgres docs screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pin the CPU build of torch first so nothing later can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lesionlab demo

# Browser tests need Debian's chromium; install it when missing (root on CI and dev machines).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "could not install chromium: browser tests will be skipped"; }

# The reader-study storage tests start their own PostgreSQL server (as the postgres user, in a temporary folder);
# install Debian's server when missing, as for chromium.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
	  echo "installing Debian postgresql for the reader-study storage tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "could not install postgresql: the PostgreSQL tests will be skipped"; }

test: $(STAMP) browser postgres
	$(BIN)/ruff check src tests tools
	$(BIN)/python .ci/dep_audit.py
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests tools

# The documentation site (mkdocs.yml, sources in docs/): built with --strict, so a broken link, anchor or API
# reference fails (the test suite builds it too: tests/docs), then served on http://127.0.0.1:8001/ until Ctrl-C.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

# The screenshots in docs/images (README and site), remade from the synthetic demo data in Debian's chromium.
screenshots: $(STAMP) browser
	$(BIN)/python tools/screenshots.py --out docs/images

# Known vulnerabilities in the installed packages (pip-audit); says so, and passes, where no service answers.
audit: $(STAMP)
	$(BIN)/python .ci/dep_audit.py

clean:
	rm -rf $(VENV) build site *.egg-info
