# The two set-up commands of the README. Each installs what it needs (Debian packages, a virtual
# environment at .venv with pinned torch/torchvision), idempotently, then runs.
VENV := .venv
STAMP := $(VENV)/.installed
APT_PACKAGES := dataset-fashion-mnist qemu-user gcc-aarch64-linux-gnu gcc libc6-dev llvm-14
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt demo test

apt:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); }

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

setup: apt $(STAMP)

demo: setup
	$(VENV)/bin/mpqbench run --recipe quick --models resnet20 --datasets fashion-mnist \
		--methods fp32,uniform:w=8,uniform:w=4,uniform:w=2 --targets arm-qemu --out results/demo

test: setup
	$(VENV)/bin/pytest -n auto -q
