# Every target installs what it needs: a virtual environment with the pinned set from
# requirements.lock, lnpt itself (editable), and the Fashion-MNIST files.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lnpt-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: install data elpv test test-wheel demo protos lock bench clean deploy-verify

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# Fashion-MNIST: Debian's package when we are root and it is missing; else torchvision's download.
data: install
	@if [ ! -f $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi
	$(BIN)/lnpt data prepare

# ELPV solar cells (CC BY-NC-SA 4.0, never committed): pip install --no-deps elpv-dataset when missing,
# then a seeded, stratified cloud/edge/test split in $$LNPT_DATA/elpv (default ~/.cache/lnpt/elpv).
elpv: install
	$(BIN)/lnpt data prepare elpv

test: install data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The same suite against a wheel (`pip install .`) in a separate environment.
test-wheel: install data
	rm -rf dist $(VENV)-wheel
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	$(PYTHON) -m venv $(VENV)-wheel
	$(VENV)-wheel/bin/python -m pip install --quiet -r requirements.lock
	$(VENV)-wheel/bin/python -m pip install --quiet --no-deps dist/lnpt-*.whl
	cd tests && ../$(VENV)-wheel/bin/python -m pytest -p no:cacheprovider --rootdir=. -c ../pyproject.toml . $(PYTEST_ARGS)

demo: install data
	$(BIN)/lnpt demo

protos: install
	$(BIN)/python -m lnpt.shared.protocol.generate

# Refresh the pinned set after changing the ranges in pyproject.toml.
lock: install
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	( echo '# Exact dependency set for `make` (pip install -r requirements.lock). Refresh with `make lock`.'; \
	  $(BIN)/python -m pip freeze --all --exclude-editable | grep -vE '^(lnpt|pip)[= ]' ) > requirements.lock

# Build the container images and run them for real with podman (root; several GB; not part of
# `make test`). See deploy/README.md, "Verify".
deploy-verify: install data
	LNPT_PYTHON=$(abspath $(BIN))/python deploy/verify.sh

bench: install data
	$(BIN)/lnpt bench serve
	$(BIN)/lnpt bench prune
	$(BIN)/lnpt bench train
	$(BIN)/lnpt bench export
	$(BIN)/lnpt bench data

clean:
	rm -rf $(VENV) $(VENV)-wheel dist build *.egg-info .pytest_cache
