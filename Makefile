# The two commands a new user needs: `make repro` and `make test`. Each sets up the
# pinned virtual environment first (only when pyproject.toml or constraints.txt changed).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
UI_PORT ?= 5000

# Stages run `python -m pipeline.<stage>`: the venv's python must come first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true

.DEFAULT_GOAL := help
.PHONY: help install repro report plots test lint ui bench tune services services-stop \
	spark-cluster spark-cluster-stop clean-venv

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(INSTALLED) ## Create .venv with the pinned dependencies (quick when unchanged)

$(INSTALLED): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		"Python 3.11 is required, found " + sys.version.split()[0] + " at " + sys.executable)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

repro: install ## Run the whole pipeline (dvc repro) on the embedded defaults
	$(BIN)/dvc repro

test: install ## Lint, then run the test suite
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install ## Lint the Python code and the Dockerfile
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

report: install ## Write docs/results.md and the README's headline from metrics/*.json (after repro)
	$(BIN)/python -m pipeline.report

plots: install ## Write plots/html/index.html: the DVC plots page, rendering offline (after repro)
	$(BIN)/python -m pipeline.plots_page

bench: install ## Print the benchmark figures (generator, exact maps, estimator; seed CNN)
	$(BIN)/python -m pipeline.bench generator
	$(BIN)/python -m pipeline.bench occlusion --arch seed
	$(BIN)/python -m pipeline.bench estimator --arch seed

WORKERS ?= 1
tune: install ## Optuna searches for the classifier and the estimator (WORKERS=2: two processes)
	TUNE_WORKERS=$(WORKERS) $(BIN)/dvc repro tuning/dvc.yaml:tune_classifier \
		tuning/dvc.yaml:tune_estimator

# One worker and no job runner: the UI of one project needs no more on 2 cores.
ui: install ## MLflow UI on 127.0.0.1 (port UI_PORT, default 5000) over the project store
	@$(BIN)/occmap store urls --port $(UI_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 \
		--port $(UI_PORT) --workers 1 \
		--backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db} \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

# A team's services on this machine (pipeline/services.py): PostgreSQL from the OS packages
# (installed through apt when missing), data kept in SERVICES_DIR between starts.
SERVICES_DIR ?= services
APT_INSTALL := sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq
services: install ## Start PostgreSQL + an MLflow server on it (127.0.0.1); prints MLFLOW_TRACKING_URI=, OPTUNA_STORAGE=
	@$(BIN)/python -c 'from pipeline.services import postgres_bin; postgres_bin()' \
		2>/dev/null || { $(APT_INSTALL) postgresql; } >&2
	@$(BIN)/python -m pipeline.services start --dir $(SERVICES_DIR)

services-stop: install ## Stop the services by their PIDs (the data stays for the next start)
	@$(BIN)/python -m pipeline.services stop --dir $(SERVICES_DIR)

# A Spark standalone cluster on this machine (pipeline/spark_cluster.py): a master and
# SPARK_WORKERS workers of 1 core each on 127.0.0.1, stopped by their PIDs; Java from the OS
# packages (installed through apt when missing), logs and PIDs in SPARK_DIR.
SPARK_DIR ?= spark-cluster
SPARK_WORKERS ?= 2
spark-cluster: install ## Start a Spark master + SPARK_WORKERS workers (127.0.0.1); prints SPARK_MASTER=
	@command -v java >/dev/null || { $(APT_INSTALL) openjdk-17-jre-headless; } >&2
	@$(BIN)/python -m pipeline.spark_cluster start --dir $(SPARK_DIR) --workers $(SPARK_WORKERS)

spark-cluster-stop: install ## Stop the Spark cluster by its PIDs
	@$(BIN)/python -m pipeline.spark_cluster stop --dir $(SPARK_DIR)

clean-venv: ## Remove the virtual environment
	rm -rf $(VENV)
