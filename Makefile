# Two commands do all the set-up on a fresh Debian / Raspberry Pi OS machine:
#   make demo   the agent against the bundled simulators and a local broker, data printed as it arrives
#   make test   installs what the tests need (mosquitto included) and runs the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: venv system-deps demo test test-fast lint typecheck schema bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		{ $(APT) update -qq && $(APT) install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# mosquitto (broker for tests and the demo; its system service is not used), socat (serial ptys).
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
		{ $(APT) update -qq && $(APT) install -y -qq mosquitto mosquitto-clients; }

demo: venv system-deps
	$(PY) -m simulators.demo

# Lint and types first, so the suite's own summary line is the last thing printed.
test: venv system-deps
	$(MAKE) --no-print-directory lint typecheck
	$(PY) -m pytest -q

test-fast: venv system-deps
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check agent drivers simulators tests bench
	$(VENV)/bin/ruff format --check agent drivers simulators tests bench

typecheck: venv
	$(VENV)/bin/mypy

schema: venv
	$(VENV)/bin/edge-agent schema > config/schema.json

bench: venv system-deps
	$(PY) -m bench.bench_e2e
	$(PY) -m bench.bench_buffer

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
