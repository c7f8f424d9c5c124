# `make demo` and `make test` set everything up themselves on a fresh Linux machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv data clean

demo: $(STAMP)   # the echo loop ships in pydicom-data: no apt download
	$(PY) -m sonosam.demo --out demo-out

test: $(STAMP) data
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench.models predictor

venv: $(STAMP)

# Re-installs only when the pins change.
$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; run 'make PYTHON=python3 ...' with a Python >= 3.11 (the pinned versions have no wheels for 3.10)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

# Debian's mricron-data (Colin27 T1 MRI + AAL labels), unpacked locally without installing it;
# Debian's invesalius-examples (a real head CT, Cranium.inv3), the same way; the MNI ICBM152 2009a template
# (T1 + grey/white matter probability maps) taken out of nilearn's wheel on PyPI (pinned by its sha256); five
# patients' scans with expert lesion labels (two lung CTs, two brain MRIs, a breast MRI) taken out of pyradiomics'
# source archive on PyPI (pinned by its sha256; pip cannot download it: its metadata names another version).
MRICRON := .data/mricron/usr/share/mricron/templates/ch2.nii.gz
HEADCT  := .data/invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3
ICBM152 := .data/icbm152/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz
NILEARN_WHEEL  := nilearn-0.14.1-py3-none-any.whl
NILEARN_SHA256 := 725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a
LESIONS := .data/lesions/lung2_label.nrrd
RADIOMICS_SDIST  := pyradiomics-3.1.0.tar.gz
RADIOMICS_URL    := https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/$(RADIOMICS_SDIST)
RADIOMICS_SHA256 := 24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4
data: $(MRICRON) $(HEADCT) $(ICBM152) $(LESIONS)
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
$(ICBM152): | $(STAMP)
	mkdir -p .data/wheels
	test -f .data/wheels/$(NILEARN_WHEEL) || $(PY) -m pip download --disable-pip-version-check -q --no-deps \
	    nilearn==0.14.1 -d .data/wheels
	echo "$(NILEARN_SHA256)  .data/wheels/$(NILEARN_WHEEL)" | sha256sum -c - \
	    || { rm -f .data/wheels/$(NILEARN_WHEEL); echo "error: the nilearn wheel is not the pinned one"; exit 1; }
	rm -rf .data/icbm152.part && mkdir -p .data/icbm152.part
	$(PY) -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	    [open('.data/icbm152.part/' + n.rsplit('/', 1)[1], 'wb').write(z.read(n)) \
	     for n in z.namelist() if '/mni_icbm152_' in n]" .data/wheels/$(NILEARN_WHEEL)
	rm -rf .data/icbm152 && mv .data/icbm152.part .data/icbm152
	test -f $@
$(LESIONS): | $(STAMP)
	mkdir -p .data/sdists
	test -f .data/sdists/$(RADIOMICS_SDIST) || $(PY) -c "import sys, urllib.request; \
	    urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" $(RADIOMICS_URL) .data/sdists/$(RADIOMICS_SDIST).part \
	    && mv .data/sdists/$(RADIOMICS_SDIST).part .data/sdists/$(RADIOMICS_SDIST)
	echo "$(RADIOMICS_SHA256)  .data/sdists/$(RADIOMICS_SDIST)" | sha256sum -c - \
	    || { rm -f .data/sdists/$(RADIOMICS_SDIST); echo "error: the pyradiomics archive is not the pinned one"; exit 1; }
	rm -rf .data/lesions.part && mkdir -p .data/lesions.part
	tar -xzf .data/sdists/$(RADIOMICS_SDIST) -C .data/lesions.part --strip-components=2 --wildcards \
	    'pyradiomics-3.1.0/data/*.nrrd'
	tar -xzf .data/sdists/$(RADIOMICS_SDIST) -O pyradiomics-3.1.0/LICENSE.txt > .data/lesions.part/LICENSE.txt
	rm -rf .data/lesions && mv .data/lesions.part .data/lesions
	test -f $@

clean:
	rm -rf .data $(VENV) demo-out build *.egg-info
