# medflow: two commands on a fresh machine, `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medflow-installed
PROFILE ?= demo

# No network calls at run time: MLflow telemetry and albumentations' update check are off.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export NO_ALBUMENTATIONS_UPDATE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# oneDNN kernels: off by default on AMD/AVX2 CPUs, 1.4-3x faster training here (medflow bench train)
export TF_ENABLE_ONEDNN_OPTS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install install-ray run test test-slow test-ray test-faults test-browser test-all bench bench-peers lock ui \
	mlflow-run \
	clean-workspace help

# The optional `ray` extra (executor: ray) and what it brings, pinned at the end of requirements.lock.
RAY_PKGS := ray|filelock|jsonschema|jsonschema-specifications|referencing|rpds-py|msgpack|fsspec|tensorboardX

help:
	@echo "make run        install, build demo sample data, run the main job, print a summary"
	@echo "make test       fast test suite"
	@echo "make test-slow  slow end-to-end tests"
	@echo "make test-ray   executor ray on a local instance and a two-node cluster (installs the ray extra)"
	@echo "make test-faults  fault suite: kills, full disks, damage, concurrency, load, hostile clients; a table"
	@echo "make test-browser  MLflow UI and report.html in headless Chromium (installs Debian chromium, selenium)"
	@echo "make bench      medflow bench suite: ingest, augment, train, infer; medians to JSON + Markdown"
	@echo "make bench-peers  medflow beside MONAI and PyTorch on the same files (their own venv, .venv-peers)"
	@echo "make ui         MLflow UI on 127.0.0.1"
	@echo "make mlflow-run PIPELINE=segmentation   the pipeline as an MLflow project run (mlflow run mlflow/)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the pins or the package metadata change.
$(STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

install: $(STAMP)

install-ray: install
	sed -n 's/^# extra ray: //p' requirements.lock > $(VENV)/ray-extra.txt
	$(BIN)/python -m pip install -q -r $(VENV)/ray-extra.txt

run: install
	$(BIN)/medflow sample-data --size $(PROFILE)
	$(BIN)/medflow run pipelines/configs/segmentation.yaml pipelines/configs/classification.yaml \
		pipelines/configs/reconstruction.yaml $(if $(filter demo,$(PROFILE)),--profile demo,)

test: install
	$(BIN)/python -m pytest -m "not slow" -q -n 2 --dist loadfile

test-slow: install
	$(BIN)/python -m pytest -m "slow and not browser and not faults and not ray" -q

# Ray on this machine: a local instance and a two-node ray.cluster_utils.Cluster, every address on 127.0.0.1.
test-ray: install-ray
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(BIN)/python -m pytest -m ray -q -p no:cacheprovider

# The fault suite (tests/faults): kill -9 at seeded points of every stage, full and read-only disks,
# damaged files, concurrent runs (SQLite and a loopback mlflow server), the scoring server under load
# and hostile clients. Prints a table of what was tried and what survived; about 15 minutes on 2 cores.
test-faults: install
	@mkdir -p workspace/faults && rm -f workspace/faults/report.jsonl
	MEDFLOW_FAULTS_REPORT=$(CURDIR)/workspace/faults/report.jsonl $(BIN)/python -m pytest -m faults -q \
		-n 2 --dist load -p no:cacheprovider tests/faults

# Debian's chromium and chromium-driver (apt, as root or with sudo) and the `browser` extra (selenium);
# Selenium drives the system chromedriver, nothing is downloaded at run time.
test-browser: install
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi
	$(BIN)/python -m pip install -q "selenium==$$(sed -n 's/^browser = \["selenium==\([0-9.]*\)".*/\1/p' pyproject.toml)"
	MEDFLOW_BROWSER_SHOTS=$${MEDFLOW_BROWSER_SHOTS:-workspace/browser-shots} $(BIN)/python -m pytest -m browser -q -p no:cacheprovider

test-all: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/medflow bench suite --size $(PROFILE)

# medflow beside MONAI and PyTorch on the same files, in one run. The peers live in their own venv
# (.venv-peers, from pipelines/bench/peers/requirements.txt); none of them becomes medflow's dependency.
PEERS := .venv-peers
bench-peers: install
	@[ -x $(PEERS)/bin/python ] || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q -r pipelines/bench/peers/requirements.txt
	$(BIN)/medflow bench peers --peers-python $(PEERS)/bin/python --size $(PROFILE)

ui: install
	$(BIN)/medflow ui

# `mlflow run` of mlflow/MLproject into the project's store. MLflow would create a missing experiment
# with artifacts under ./mlruns of the working directory, so medflow creates it first, with its artifacts
# beside the store (mlflow/artifacts/<name>): nothing is written into the checkout outside mlflow/.
PIPELINE ?= segmentation
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow/mlflow.db
mlflow-run: install
	MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI) $(BIN)/python -c \
		"from medflow.tracking.runs import MlflowTracker; MlflowTracker().experiment_id('$(basename $(notdir $(PIPELINE)))')"
	MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI) $(BIN)/mlflow run mlflow --env-manager local \
		--experiment-name $(basename $(notdir $(PIPELINE))) -P pipeline=$(PIPELINE) -P profile=$(PROFILE)

# Re-pin every transitive dependency from the current venv. The `ray` extra's pins (make install-ray)
# go to the end as "# extra ray: NAME==VERSION" lines, so `make install` and `make run` never install Ray.
lock: install
	( echo "# Full pinned dependency set for Python 3.11 (pip freeze of a working install)."; \
	  echo "# Regenerate: make lock (after make install-ray, so the ray extra's pins are kept)"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^medflow' | grep -v -i -E "^($(RAY_PKGS))=="; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -i -E "^($(RAY_PKGS))==" | sed 's/^/# extra ray: /' \
	) > requirements.lock

clean-workspace:
	rm -rf workspace
