# Two entry points (see README): `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench install clean

$(STAMP): setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch/torchvision: the versions this stack ships on local disk (CUDA build, runs on CPU too).
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Pretrain ResNet-18 on the shapes classification set, fine-tune the R18-FPN detector from it, evaluate, draw.
demo: $(STAMP)
	$(VPY) tools/demo.py

test: $(STAMP)
	$(VPY) -m pytest -q -n 2 --durations=15 tests

# Opt-in long checks (not in CI): the pretraining hand-off comparison, ~8 minutes on 2 cores; detectron2's R50-C4
# with height/width (~30 s).
test-slow: $(STAMP)
	RESNET_DET_SLOW=1 $(VPY) -m pytest -q -rs tests/projects/test_handoff_study.py \
		"tests/test_detectron2_outputs.py::test_c4_zoo_checkpoint_with_height_width_gives_detectron2s_rescaled_detections"

bench: $(STAMP)
	$(VPY) tools/benchmark.py --output benchmarks/results_cpu

clean:
	rm -rf $(VENV) output
