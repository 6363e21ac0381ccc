# The common vocabulary: compile, test, bench, lint, typecheck, clean.
PYTHON ?= .venv/bin/python

.PHONY: compile test test-python bench lint typecheck clean

compile:
	DROPR_REQUIRE_EXTENSIONS=1 $(PYTHON) setup.py build_ext --inplace -q

test:
	./scripts/test

test-python:
	env -u DROPR_REQUIRE_EXTENSIONS DROPR_NO_EXTENSIONS=1 $(PYTHON) -m pytest -q

bench:
	$(PYTHON) -m pytest bench -q --benchmark-only
	$(PYTHON) bench/put.py
	$(PYTHON) bench/depth_scan.py
	$(PYTHON) bench/pipeline.py
	$(PYTHON) bench/pipeline.py --put-many 100
	$(PYTHON) bench/peers.py --chart bench-peers.png
	$(PYTHON) bench/e2e.py
	$(PYTHON) bench/e2e.py --long 200000 --rounds 2
	$(PYTHON) bench/latency.py
	$(PYTHON) bench/drain.py
	$(PYTHON) bench/consume.py

lint:
	$(PYTHON) -m ruff check dropr tests bench scripts
	$(PYTHON) -m ruff format --check dropr tests bench scripts

typecheck:
	$(PYTHON) -m mypy

clean:
	rm -rf build dist *.egg-info ext/*.c ext/*.html dropr/*.so
