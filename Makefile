# Two commands do all the set-up on a fresh Debian / Raspberry Pi OS machine:
#   make demo   the agent against the bundled simulators and a local broker, data printed as it arrives
#   make test   installs what the tests need (mosquitto included) and runs the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: venv system-deps test-deps wheelhouse demo demo-pdm demo-s7 demo-mc test test-fast lint typecheck schema reference proto bench bench-outputs bench-peer soak clean

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

# mosquitto: the broker for the demo and the tests (its system service is not used).
MOSQUITTO_BIN ?= /usr/sbin/mosquitto
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x $(MOSQUITTO_BIN) ] || \
		{ $(APT) update -qq && $(APT) install -y -qq mosquitto mosquitto-clients; }

# What only the tests need: headless Chromium and CJK fonts (the status page in both languages),
# systemd-analyze (the unit file), protoc (an independent Sparkplug decoder), openssl (certificates
# and the cloud platforms' signature vectors).
TEST_TOOLS := chromium systemd-analyze protoc openssl
# The check runs in a subshell: an `exit 1` in a `{ ...; }` group would end the recipe's own shell
# before the install branch (tests/test_makefile.py runs this step with the tools hidden).
test-deps: system-deps
	@( for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || exit 1; done; \
		[ -d /usr/share/fonts/opentype/noto ] ) || \
		{ $(APT) update -qq && \
		  $(APT) install -y -qq chromium fonts-noto-cjk systemd protobuf-compiler openssl; }

demo: venv system-deps
	$(PY) -m simulators.demo

# Predictive maintenance: a pump's bearing wearing out over a month, in about three minutes.
demo-pdm: venv system-deps
	$(PY) -m simulators.demo_pdm

# An injection-moulding machine's Siemens S7 PLC (python-snap7's server) read by the s7 driver.
demo-s7: venv system-deps
	$(PY) -m simulators.demo_s7

# A press line's Mitsubishi PLC (MC protocol 3E) read by the mc driver; ENCODING=ascii for the
# ASCII code.
demo-mc: venv system-deps
	$(PY) -m simulators.demo_mc --encoding $(or $(ENCODING),binary)

# Lint and types first, so the suite's own summary line is the last thing printed.
test: venv test-deps
	$(MAKE) --no-print-directory lint typecheck
	$(PY) -m pytest -q

test-fast: venv test-deps
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check agent drivers simulators tests bench
	$(VENV)/bin/ruff format --check agent drivers simulators tests bench

typecheck: venv
	$(VENV)/bin/mypy

schema: venv
	$(VENV)/bin/edge-agent schema > config/schema.json

# docs/reference/config.md: every config key, generated from the schema (a test keeps it current).
reference: venv
	$(VENV)/bin/edge-agent schema --markdown > docs/reference/config.md

# Sparkplug B: regenerate the committed Python module from the .proto (needs protobuf-compiler).
proto:
	cd agent/north/formats/sparkplug && protoc --python_out=. sparkplug_b.proto

# The 30-minute soak (200 devices, broker flapping): fails on growth beyond 2 % after warm-up.
soak: venv system-deps
	$(PY) -m tests.test_soak --minutes 30

bench: venv system-deps
	$(PY) -m bench.bench_e2e
	$(PY) -m bench.bench_buffer
	$(PY) -m bench.bench_processing
	$(PY) -m bench.bench_rtu
	$(PY) -m bench.bench_dlt645
	$(PY) -m bench.bench_modbus_requests
	$(PY) -m bench.bench_mc
	$(PY) -m bench.bench_s7
	$(PY) -m bench.bench_opcua
	$(PY) -m bench.bench_opcua_commands
	$(PY) -m bench.bench_fleet
	$(PY) -m bench.bench_peer $(if $(PEER)$(PEER_VENV),$(if $(PEER_VENV),--peer-venv $(PEER_VENV)),--no-peer) $(BENCH_PEER_ARGS)

# Several destinations (outputs:): what each added destination costs, and one blackholed for a
# simulated hour while the other stays live (about 5 minutes; docs/performance.md).
bench-outputs: venv system-deps
	$(PY) -m bench.bench_outputs

# Side by side with ThingsBoard IoT Gateway (installed from PyPI into a venv of its own under the
# bench's temporary folder), CPU, RSS, values delivered and SD-card writes (about 25 minutes;
# docs/performance.md). PEER_VENV=<venv with thingsboard-gateway> skips the install. `make bench`
# runs the same workloads against the bare poller only, or with the gateway given PEER=1.
bench-peer: venv system-deps
	$(PY) -m bench.bench_peer $(if $(PEER_VENV),--peer-venv $(PEER_VENV)) $(BENCH_PEER_ARGS)

# Wheels of the agent and all its dependencies, for gateways without internet:
# copy the repository with ./wheelhouse to the gateway, then `sudo systemd/install.sh`.
# Build it on the gateway's CPU architecture and Python version (e.g. on a spare Pi).
wheelhouse: venv
	rm -rf wheelhouse
	$(PY) -m pip wheel --quiet --wheel-dir wheelhouse .

clean:
	rm -rf $(VENV) data wheelhouse .pytest_cache .mypy_cache .ruff_cache
