# `make demo` and `make test` set everything up themselves on a fresh Linux machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv data clean

demo: $(STAMP) data
	$(PY) -m sonosam.demo --out demo-out

test: $(STAMP) data
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench.models predictor

venv: $(STAMP)

# Re-installs only when the pins change.
$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; run 'make PYTHON=python3 ...' with a Python >= 3.10"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

# Debian's mricron-data (Colin27 T1 MRI + AAL labels), unpacked locally without installing it;
# Debian's invesalius-examples (a real head CT, Cranium.inv3), the same way.
MRICRON := .data/mricron/usr/share/mricron/templates/ch2.nii.gz
HEADCT  := .data/invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3
data: $(MRICRON) $(HEADCT)
$(MRICRON):
	mkdir -p .data/deb
	cd .data/deb && { apt-get download mricron-data 2>/dev/null || { apt-get update -qq && apt-get download mricron-data; }; }
	dpkg -x .data/deb/mricron-data_*.deb .data/mricron
	test -f $@
$(HEADCT):
	mkdir -p .data/deb
	cd .data/deb && { apt-get download invesalius-examples 2>/dev/null || { apt-get update -qq && apt-get download invesalius-examples; }; }
	dpkg -x .data/deb/invesalius-examples_*.deb .data/invesalius
	test -f $@

clean:
	rm -rf .data $(VENV) demo-out build *.egg-info
