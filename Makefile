# Set-up and checks. `make test` and `make demo` work from a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := 2.13.0
TORCH_CPU := https://download.pytorch.org/whl/cpu

.PHONY: test demo lint bench wheel clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# PyTorch's CPU build first, by name from PyTorch's CPU index: on Linux the plain PyPI
	# pin resolves to the CUDA build and gigabytes of packages. The plain pin only where
	# that index cannot be reached (a local wheel or mirror then provides it).
	if $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU)/torch/', timeout=10)" \
	    2>/dev/null; then \
	  $(PY) -m pip install -q torch==$(TORCH) --index-url $(TORCH_CPU); \
	else \
	  echo "PyTorch's CPU index is out of reach: installing torch==$(TORCH) as pinned"; \
	  $(PY) -m pip install -q torch==$(TORCH); \
	fi
	$(PY) -m pip install -q -e '.[export,dev,plot,serve]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(VENV)/bin/edgeexit demo

# Figures go to build/bench/ (ignored): the recorded ones in benchmarks/results/ change only
# when someone means them to (benchmarks/run.py --out benchmarks/results).
bench: $(STAMP)
	$(PY) benchmarks/run.py --out build/bench

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
