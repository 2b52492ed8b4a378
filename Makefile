# Thin targets over the `tck` CLI (tck/). `make help` lists them.
SHELL := /bin/bash
PY := .venv/bin/python
TCK := $(PY) -m tck
MODEL ?= digits
PRECISIONS ?= fp32,fp16,int8
TARGET ?= cpu
URL ?=
SLA_MS ?=
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup demo engines serve test test-gpu bench bench-overload bench-tuner bench-peer bench-fleet-peer bench-semantic cache-serve perf report deploy-manifests compare clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: ## venv + pinned deps + real tritonserver + perf_analyzer + checkov + Model Analyzer (idempotent)
	@bash scripts/setup.sh

demo: setup ## MAIN JOB: build digits, serve it on a local Triton, print the served accuracy
	@$(TCK) demo --precisions $(PRECISIONS)

engines: setup ## build, gate and publish variants (MODEL=digits|minilm|all PRECISIONS=fp32,fp16,int8 TARGET=cpu)
	@$(TCK) engines --model $(MODEL) --precisions $(PRECISIONS) --target $(TARGET)

compare: setup ## Polygraphy per-output error statistics between built variants
	@$(TCK) compare --model $(MODEL)

serve: setup ## start Triton on model_repository/ (local; TRITON_IMAGE=nvcr.io/... runs the NGC container)
	@$(TCK) serve

test: setup ## the test suite (what CI runs)
	@$(PY) -m pytest -q tests

test-gpu: setup ## only the GPU tests (TensorRT); they skip with the reason where there is no GPU
	@$(PY) -m pytest -q -m gpu tests

bench: setup ## in-process ONNX Runtime INT8/FP32 (interleaved replicates) -> results/, records/ and the README table
	@$(TCK) bench --record

perf: setup ## perf_analyzer sweeps of the served model -> results/ + report (MODEL=, URL=host:port, INPUT_DATA=your.json, ARGS="--loads 1,4 --rounds 2")
	@$(TCK) default --model $(MODEL) $(if $(URL),--url $(URL),--record) $(if $(INPUT_DATA),--input-data $(INPUT_DATA)) $(ARGS)

report: setup ## tuning + cost campaign report (MODEL=digits|minilm|spec.toml SLA_MS=: the spec's sla_ms, else 10; ARGS=: more tck campaign options); FLEET=fleet.toml: several models packed vs one per machine
	@$(if $(FLEET),$(TCK) fleet --fleet $(FLEET) --record $(ARGS),$(TCK) campaign --model $(MODEL) $(if $(SLA_MS),--sla-ms $(SLA_MS)) --record $(ARGS))

bench-overload: setup ## the backlog bound: its cost at concurrency 1 (interleaved) and 2x capacity for 60 s, on vs off (~8 min) -> results/ + records/ + README
	@$(TCK) bench-overload --record

bench-tuner: setup ## tuner efficiency: pruned tuner vs the full grid (long: ~40 min before the grid held both caps, about twice that now) -> results/ + records/ + README
	@$(TCK) bench-tuner --model $(MODEL) $(if $(SLA_MS),--sla-ms $(SLA_MS)) --record

bench-peer: setup ## the tuner twice and Model Analyzer's brute search on one model and SLA, judged head to head by two designs (~45 min) -> results/ + records/ + README
	@$(TCK) bench-peer --model $(MODEL) $(if $(SLA_MS),--sla-ms $(SLA_MS)) --record $(ARGS)

bench-fleet-peer: setup ## the fleet's packed pick vs Model Analyzer's concurrent mode, head to head (FLEET=fleet.toml; after make report FLEET=; ~40 min) -> results/ + records/ + README
	@$(TCK) bench-fleet-peer --fleet $(or $(FLEET),build_engines/examples/fleets/house.toml) --record $(ARGS)

bench-semantic: setup ## the Redis semantic cache's lookup latency at 1k / 10k / 100k entries (~2 min) -> results/ + records/ + README
	@$(TCK) bench-semantic --record

cache-serve: setup ## the fleet's shared cache: a private redis-server on loopback (prints the TCK_REDIS_URL to export; URL_FILE=path also writes it there, 0600)
	@$(TCK) cache serve $(if $(URL_FILE),--url-file $(URL_FILE))

deploy-manifests: setup ## Kubernetes manifests sized by the cost model -> deploy/ (FLEET=fleet.toml: one Deployment per packed group)
	@$(if $(FLEET),$(TCK) fleet-manifests --fleet $(FLEET) $(ARGS),$(TCK) manifests --model $(MODEL) $(ARGS))

clean: ## remove built artifacts and results (keeps the venv and tools)
	rm -rf build results model_repository .model_repository.*
