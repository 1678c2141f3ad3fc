# Two commands on a fresh machine:  make demo  (train a small BEGAN on built-in glyphs)
#                                   make test  (the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch when the venv has none; bring your own CUDA build first to use a GPU.
TORCH  ?= torch==2.13.0
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
GPU_CHECK_DIR ?= runs/gpu-check-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test test-fast lint bench gpu-check

$(BIN)/began-dist: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,testbed]"
	touch $@

install: $(BIN)/began-dist

demo: install
	$(BIN)/began-dist train --config configs/demo_glyphs32.yaml run.dir=$(DEMO_DIR)
	$(BIN)/began-dist sample $(DEMO_DIR) --out $(DEMO_DIR)/samples/final
	$(BIN)/began-dist eval $(DEMO_DIR) --metrics swd,msssim,ndb,recon,kid --checkpoint all --n 512
	$(BIN)/python -m began_dist.eval.commands.versus_initial $(DEMO_DIR) --n 512 > $(DEMO_DIR)/versus_initial.txt
	$(BIN)/began-dist report $(DEMO_DIR)
	@cat $(DEMO_DIR)/versus_initial.txt
	@echo "sample grids:  $(DEMO_DIR)/samples/ (final: $(DEMO_DIR)/samples/final/grid.png)"
	@echo "report:        $(DEMO_DIR)/report.html"
	@echo "tensorboard:   $(BIN)/tensorboard --logdir $(DEMO_DIR)/tb"

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

# Training-step speed against a plain port, same run (BENCH_ARGS="--sizes 32 --repeats 7", "--compile").
bench: install
	$(BIN)/python benchmarks/step_speed.py $(BENCH_ARGS)

# On a lent GPU: CUDA tests, step equivalence and speed on the GPU, a Ray Train run over NCCL,
# within 8 minutes; DIR/gpu_check.json + .txt (GPU_CHECK_ARGS="--device cpu --smoke": a CPU dry run).
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out $(GPU_CHECK_DIR) $(GPU_CHECK_ARGS)
