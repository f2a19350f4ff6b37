# Set-up and checks. `make test` and `make demo` work from a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench wheel clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[export,dev,plot]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(VENV)/bin/edgeexit demo

bench: $(STAMP)
	$(PY) benchmarks/run.py

# The wheel a device installs (pure Python: one wheel for x86 and the Pi), built from a copy
# of what it ships, so no stale build/ directory can leak old files into it.
wheel: $(STAMP)
	rm -rf build/wheel-src && mkdir -p build/wheel-src dist
	tar --exclude=__pycache__ -cf - pyproject.toml README.md edgeexit | tar -xf - -C build/wheel-src
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist build/wheel-src
	rm -rf build/wheel-src
	@ls dist/edgeexit-*.whl

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
