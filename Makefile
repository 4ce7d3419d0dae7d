# vla_ros developer entry points. Every target keeps ROS 2 discovery on this machine.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# A private domain for manual runs and the demo (tests pick their own per session).
export ROS_DOMAIN_ID ?= 42
VENV := .venv
ENV := source $(VENV)/setup.bash
PYTEST_ARGS ?=

.PHONY: help setup test demo smoke train-demo bench colcon-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup:  ## create or update .venv (idempotent; seconds when nothing changed)
	@scripts/setup_dev.sh

test: setup  ## set up if needed, then run the whole test suite
	@$(ENV) && python -m pytest $(PYTEST_ARGS)

demo: setup  ## set up if needed, then run the main demo: the simulated Panda follows instructions (DEMO_ARGS="--json out.json")
	@$(ENV) && python scripts/demo.py $(DEMO_ARGS)

smoke: setup  ## start the policy node with the tiny model and show it commanding
	@$(ENV) && python scripts/demo.py --smoke

# The shipped checkpoints/sim_demo: 700 expert episodes (seeds 1000..1699: 200 touch, 300 push,
# 200 pick), then 6000 steps of behaviour cloning at batch 64 on 1 CPU thread with the training
# instructions rewritten from config/instructions/sim_tasks.json; the best-by-validation policy is
# shipped. Its chunk is 32 actions (3.2 s at 10 Hz; config/models/sim_demo.json) so that a model
# up to ~1.6 s slow keeps the arm moving (README: Slow models). One thread: a 2-thread run slows
# down several-fold when anything else wants a core.
DEMO_BAGS := data/demo_bags
DEMO_RUN := data/train_demo
train-demo: setup  ## collect expert demonstrations in the sim and train checkpoints/sim_demo (50 min on 2 cores, measured)
	@$(ENV) && if [ ! -f $(DEMO_BAGS)/collect_summary.json ]; then \
	  vla-ros collect --out $(DEMO_BAGS) --episodes 700 --seed 1000 --workers 2; fi
	@$(ENV) && OMP_NUM_THREADS=1 vla-ros train --data $(DEMO_BAGS) --config sim_demo --out $(DEMO_RUN) \
	  --steps 6000 --batch-size 64 --lr 1e-3 --val-every 500 --checkpoint-every 500 --threads 1 --seed 0 \
	  --instruction-augment config/instructions/sim_tasks.json \
	  $$([ -d $(DEMO_RUN)/last ] && echo --resume)
	rm -rf checkpoints/sim_demo && mkdir -p checkpoints && cp -r $(DEMO_RUN)/best checkpoints/sim_demo
	@echo "checkpoints/sim_demo updated; run make demo to evaluate it"

bench: setup  ## run the benchmarks (tables printed, JSON in benchmarks/results/)
	@$(ENV) && python benchmarks/image_latency.py && python benchmarks/model_latency.py && python benchmarks/node_latency.py && python benchmarks/remote_latency.py && python benchmarks/record_throughput.py

colcon-check: setup  ## colcon list + colcon build of this repository in a scratch workspace, then run a node from it
	@$(ENV) && scripts/colcon_check.sh

clean:  ## remove build outputs (keeps .venv)
	rm -rf build install log
