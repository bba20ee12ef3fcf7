# roiedge — every target bootstraps .venv/ on first use, so `make test` alone works on a fresh machine.
PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
ARTIFACTS   ?= artifacts
# Keep TensorFlow's C++ logging quiet in every target.
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv test test-slow lint format model evaluate export report bench test-edge edgetpu clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==25.3"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

## test: lint, then the test suite (the README's test command; CI runs this).
test: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

## test-slow: the long checks kept out of `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## model: train the detector from scratch on procedural data (~16 min on 2 cores; see README).
model: $(STAMP)
	$(PY) -m models.train

## evaluate: mAP of the shipped float Keras detector on the held-out split.
evaluate: $(STAMP)
	$(PY) -m models.evaluate --json $(ARTIFACTS)/keras_eval.json

## export: convert the shipped detector to TFLite and ONNX artifacts under artifacts/, then report.
export: $(STAMP)
	$(PY) -m export --out $(ARTIFACTS)
	$(PY) -m export.report --artifacts $(ARTIFACTS)

$(ARTIFACTS)/manifest.json: | $(STAMP)
	$(PY) -m export --out $(ARTIFACTS)

## report: accuracy/speed/size of every artifact against float Keras (report.json/.md/.png).
report: $(STAMP) $(ARTIFACTS)/manifest.json
	$(PY) -m export.report --artifacts $(ARTIFACTS)

## bench: RoIPooling micro-benchmark (+ per-op profile, lowering variants), realistic head in every
## format, RoIPooling cost curves, artifact speed table, ONNX int8 profile, runtime cold start and memory,
## video stream fps (pipelined vs sequential, 1 and 2 cores), single file vs two-stage detect() latency.
bench: $(STAMP) $(ARTIFACTS)/manifest.json
	$(PY) -m bench.roi --json $(ARTIFACTS)/bench_roi.json --png $(ARTIFACTS)/bench_roi.png
	$(PY) -m bench.head --json $(ARTIFACTS)/bench_head.json
	$(PY) -m bench.scaling --json $(ARTIFACTS)/bench_scaling.json --png $(ARTIFACTS)/bench_scaling.png
	$(PY) -m export.report --artifacts $(ARTIFACTS) --speed-only
	$(PY) -m bench.onnx_profile --artifacts $(ARTIFACTS) --json $(ARTIFACTS)/bench_onnx_profile.json --png $(ARTIFACTS)/bench_onnx_profile.png
	$(PY) -m runtime bench $(ARTIFACTS)
	$(PY) bench/cold_start.py --artifacts $(ARTIFACTS)
	$(PY) -m bench.stream --artifacts $(ARTIFACTS) --json $(ARTIFACTS)/bench_stream.json --png $(ARTIFACTS)/bench_stream.png
	$(PY) -m bench.single --artifacts $(ARTIFACTS) --json $(ARTIFACTS)/bench_single.json --png $(ARTIFACTS)/bench_single.png

## edgetpu: compile the int8_io backbone and detector.int8_io.tflite for the Coral Edge TPU (needs edgetpu_compiler installed).
edgetpu: $(STAMP) $(ARTIFACTS)/manifest.json
	$(PY) -m export edgetpu $(ARTIFACTS)

## test-edge: run the TF-free runtime in throwaway device-like environments.
test-edge: $(STAMP)
	./scripts/test_edge.sh $(ARTIFACTS)

clean:
	rm -rf $(VENV) .edge-envs .pytest_cache .ruff_cache
