# Each target is one command. PY can point at another interpreter: make test PY=.venv/bin/python
PY ?= python3
TORCH ?= torch==2.13.0

.PHONY: install test test-slow gpu-check lint bench demo

install:  # works in a fresh virtualenv too (make install PY=.venv/bin/python); the last step builds offline
	$(PY) -m pip install $(TORCH) && $(PY) -m pip install -r requirements.txt -r requirements-dev.txt && $(PY) -m pip install --no-deps --no-build-isolation -e .

test:
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q -x tests

# test-slow adds the @pytest.mark.slow checks: end-to-end runs (the one-GPU recipe, kill and resume, a venv install,
# bench, torchrun, the testbeds' bands, the compiled decode step)
test-slow:
	MINIPSN_SLOW=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q -x tests

gpu-check:  # on a CUDA machine: the GPU tests, then the benchmark with the 1.5B-shaped model
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m gpu tests && HF_HUB_OFFLINE=1 $(PY) cli.py bench --out bench

lint:
	$(PY) -m ruff check minipsn cli.py examples tests

bench:
	HF_HUB_OFFLINE=1 $(PY) cli.py bench --out bench

demo:
	HF_HUB_OFFLINE=1 $(PY) cli.py train --model tiny --out runs/demo
