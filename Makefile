# vla_ros developer entry points. Every target keeps ROS 2 discovery on this machine.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# A private domain for manual runs and the demo (tests pick their own per session).
export ROS_DOMAIN_ID ?= 42
VENV := .venv
ENV := source $(VENV)/setup.bash
PYTEST_ARGS ?=

.PHONY: help setup test demo smoke bench colcon-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup:  ## create or update .venv (idempotent; seconds when nothing changed)
	@scripts/setup_dev.sh

test: setup  ## set up if needed, then run the whole test suite
	@$(ENV) && python -m pytest $(PYTEST_ARGS)

demo: setup  ## set up if needed, then run the main demo
	@$(ENV) && python scripts/demo.py

smoke: setup  ## start the policy node with the tiny model and show it commanding
	@$(ENV) && python scripts/demo.py --smoke

bench: setup  ## run the benchmarks (tables printed, JSON in benchmarks/results/)
	@$(ENV) && python benchmarks/image_latency.py && python benchmarks/model_latency.py && python benchmarks/node_latency.py

colcon-check: setup  ## colcon list + colcon build of this repository in a scratch workspace, then run a node from it
	@$(ENV) && scripts/colcon_check.sh

clean:  ## remove build outputs (keeps .venv)
	rm -rf build install log
