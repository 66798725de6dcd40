# Two entry points for newcomers: `make demo` and `make test`. Both go through `make install`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench clean browser

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	@touch $(STAMP)

demo: install
	$(PY) -m luban train examples/demo_zh_sentiment.yaml --set output.overwrite=true
	$(PY) -m luban predict runs/demo_zh_sentiment --text "房间很干净，服务也很周到，下次还会再来" --text "质量太差了，用了两天就坏了，非常失望" --text "物流很快，包装完好，性价比不错"
	@echo ""
	@echo "Next: open runs/demo_zh_sentiment/report.html in a browser;"
	@echo "      evaluate on new data:  .venv/bin/luban evaluate runs/demo_zh_sentiment --data your.tsv"
	@echo "      predict a file:        .venv/bin/luban predict runs/demo_zh_sentiment --input your.tsv --output preds.jsonl"
	@echo "      serve it:              .venv/bin/luban serve runs/demo_zh_sentiment --port 8000"
	@echo "                             then open http://127.0.0.1:8000/ (playground) or"
	@echo "                             curl -s localhost:8000/v1/predict -H 'content-type: application/json' -d '{\"inputs\": [\"服务很好\"]}'"

# the suite on every core (pytest-xdist; each test keeps one intra-op thread), a test file per worker so that a
# file's module fixtures are built once (at most 4 workers: each holds its own torch)
test: install browser
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile

# the tests that start a local Ray cluster (Ray Train DDP, Ray Tune trials, Ray Data prediction): about 2 minutes
test-slow: install
	$(PY) -m pytest -m slow

# the playground's end-to-end test drives a headless Chromium (Debian's package; never a downloaded browser), with a
# CJK font so Chinese labels in the playground and report.html render: install them where we can (root with apt),
# otherwise that one test skips
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "note: no chromium; the playground browser test will be skipped"
	@fc-list :lang=zh 2>/dev/null | grep -q . || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && apt-get install -y -qq fonts-noto-cjk) >/dev/null 2>&1; } || \
	  echo "note: no CJK font (fonts-noto-cjk); Chinese text in the browser shows as boxes"

clean:
	rm -rf runs .pytest_cache
