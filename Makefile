# The two set-up commands of the README. Each installs what it needs (Debian packages, a virtual
# environment at .venv with pinned torch/torchvision), idempotently, then runs.
VENV := .venv
STAMP := $(VENV)/.installed
# Every file the tests build or run with must come from these packages or their dependencies
# (tests/test_packaging.py checks it on Debian).
APT_PACKAGES := dataset-fashion-mnist qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc libc6-dev \
	llvm-14 verilator g++ make chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt demo test

# Installs (after apt-get update) unless every package is in state "installed": `dpkg -s` alone also
# accepts a package removed but kept in state config-files. Otherwise makes sure the package lists
# exist, which apt-cache needs (tests/test_packaging.py).
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Status}\n' "$$p" 2>/dev/null | grep -qx installed || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	elif ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq; \
	fi

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,ray,slurm]'
	touch $(STAMP)

setup: apt $(STAMP)

demo: setup
	$(VENV)/bin/mpqbench run --recipe quick --models resnet20 --datasets fashion-mnist \
		--methods fp32,uniform:w=8,uniform:w=4,uniform:w=2 --targets arm-qemu --jobs 2 --out results/demo

test: setup
	$(VENV)/bin/pytest -n auto -q
