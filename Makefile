# cifarlab: `make demo` runs the main job, `make test` runs the tests. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build on the development machines; any torch 2.11-2.14 works (GPU builds too).
TORCH ?= torch==2.13.0
SHARED_DATA ?= ../shared/data/cifar10
export CIFARLAB_DATA ?= $(CURDIR)/data

.PHONY: demo test install data browser postgres redis bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an open range would pull the newest CUDA build (several GB).
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

# Finds CIFAR-10 in ./data, else unpacks the verified offline copy, else leaves it to --download.
data: data/.ready

data/.ready:
	@mkdir -p data
	@if [ -d data/train ] || [ -d data/cifar-10-batches-py ]; then \
		echo "data: using ./data"; \
	elif [ -d "$(SHARED_DATA)" ]; then \
		echo "data: unpacking the offline copy from $(SHARED_DATA)"; \
		(cd "$(SHARED_DATA)" && sha256sum -c --quiet SHA256SUMS) && \
		cat "$(SHARED_DATA)"/cifar10-png.tar.gz.part-* | tar xz -C data; \
	else \
		echo "data: none found; cifarlab will download CIFAR-10 (needs torchvision and internet)"; \
	fi
	@touch $@

# Headless Chromium for the report's browser test (Debian's package; needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "browser: could not install chromium; the browser test will be skipped"; \
		else echo "browser: not root, chromium not installed; the browser test will be skipped"; fi; }

# PostgreSQL for the many-machine sweep test (Debian's package; needs root). The suite starts its own
# throw-away server in a temporary folder, so the package is told not to create a system cluster.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			mkdir -p /etc/postgresql-common; \
			[ -e /etc/postgresql-common/createcluster.conf ] || \
				echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
			|| echo "postgres: could not install postgresql; the PostgreSQL test will be skipped"; \
		else echo "postgres: not root, postgresql not installed; the PostgreSQL test will be skipped"; fi; }

# Redis for the many-machine sweep test on Optuna's Redis journal (Debian's package; needs root). The suite
# starts its own server on a free port in a temporary folder; a system service the package starts is unused.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
			|| echo "redis: could not install redis-server; the Redis test will be skipped"; \
		else echo "redis: not root, redis-server not installed; the Redis test will be skipped"; fi; }

# With a GPU: the normalisation study (3 norms x 5 seeds). Without: what augmentation does to overfitting
# (s8-net, 2 experiments x 3 seeds, about 5 minutes on 2 cores).
demo: install data
	$(BIN)/cifarlab data --download
	@if $(BIN)/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		spec=studies/normalization.toml; else spec=studies/augmentation-cpu.toml; fi; \
	$(BIN)/cifarlab study $$spec --out runs/demo-$$(basename $$spec .toml) --report && \
	echo "results: runs/demo-$$(basename $$spec .toml)/ (open report.html)"

test: install data browser postgres redis
	$(BIN)/python -m pytest -q

bench: install data
	$(BIN)/python bench/bench.py cpu

clean:
	rm -rf $(VENV) runs .pytest_cache
