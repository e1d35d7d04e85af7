# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SNE := $(VENV)/bin/sne
STAMP := $(VENV)/.installed
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build onto a CPU machine.
TORCH_SPEC ?= torch==2.13.0
# The lock: exact versions of every dependency that the suite passed with (`make lock` refreshes it).
LOCK ?= requirements/constraints.txt
LOCK_VENV ?= .venv-lock
# What `make lock` runs in the fresh environment before it writes the lock.
LOCK_TEST ?= -m pytest -q -p no:cacheprovider
# GUIDE section 8: OpenMP's default spin-wait makes 2-thread timings swing wildly on small VMs.
export OMP_WAIT_POLICY ?= PASSIVE

DEMO_DIR ?= demo
DEMO_N ?= 1000
DEMO_EPOCHS ?= 15
# The demo uses the shared-initialisation protocol, where SNE visibly learns within minutes on two
# CPU cores; the headline, independent initialisation, is in docs/RESULTS.md (scripts/inr_results.sh).
# SNE's default chooses no sign flips for this zoo (its networks share one initialisation): with
# them the demo's run sat at the mean predictor.
DEMO_INIT ?= shared

.PHONY: demo test soak bench results clean-demo install lock

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -c $(LOCK) "$(TORCH_SPEC)"
	$(PY) -m pip install -c $(LOCK) -e ".[test]"
	touch $(STAMP)

# Refresh the lock: resolve the newest versions within pyproject's bounds in a fresh environment
# (torch stays $(TORCH_SPEC)), run the suite there, and only if it passes write their exact versions
# to $(LOCK). Then `make install` (the stamp depends on the lock) brings .venv to them.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/python -m pip install -e ".[test]" "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/python $(LOCK_TEST)
	{ echo "# Exact versions that the suite passed with; written by 'make lock' (do not edit by hand)."; \
	  echo "# Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^sne( |=|@|$$)' \
	    | sed -E 's/^torch==([^+]*)\+.*/torch==\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)
	$(MAKE) install

# One pytest worker per core (at most 4; each test file stays on one worker, so its module fixtures are
# built once). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Kill anywhere: SIGKILL zoo generation, training and import at SOAK_KILLS random moments each and
# resume (minutes; not part of `make test`). SOAK_SEED chooses the moments.
SOAK_KILLS ?= 20
SOAK_SEED ?= 0
soak: $(STAMP)
	SNE_SOAK_KILLS=$(SOAK_KILLS) SNE_SOAK_SEED=$(SOAK_SEED) OMP_NUM_THREADS=1 $(PY) -m pytest -q -m soak tests/test_soak.py

demo: $(STAMP)
	$(SNE) zoo generate sine-inr --n $(DEMO_N) --seed 0 --init $(DEMO_INIT) --out $(DEMO_DIR)/zoo
	$(SNE) train --zoo $(DEMO_DIR)/zoo --encoder sne --target frequency --epochs $(DEMO_EPOCHS) --seed 0 \
		--device cpu --out $(DEMO_DIR)/run
	$(SNE) evaluate $(DEMO_DIR)/run --device cpu

bench: $(STAMP)
	$(PY) benchmarks/bench_inr_fit.py
	$(PY) benchmarks/bench_sne_train.py
	$(PY) benchmarks/bench_encoders.py
	$(PY) benchmarks/bench_cnn_zoo.py
	$(PY) benchmarks/bench_neural_graph_memory.py
	$(PY) benchmarks/bench_record.py
	$(PY) benchmarks/bench_encode_scale.py
	$(PY) benchmarks/bench_embed_cli.py
	$(PY) benchmarks/bench_ddp.py

results: $(STAMP)
	$(PY) scripts/make_results_md.py

clean-demo:
	rm -rf $(DEMO_DIR)
