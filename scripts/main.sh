#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct), from a fresh machine:
# set up, answer one question with an inference-time architecture, then SEARCH for the architecture that wins on
# the bundled arith-1 task (a short Optuna TPE study over the built-in `quick` space: greedy or sampled answers with
# a plain or confidence-weighted vote, or program-aided voting; scored on the dev split with successive halving),
# and show the found architecture against one greedy call on the held-out test split (table + PNG).
# Rerunning resumes finished work (the study, every trial's run store, the test-split runs) instead of redoing it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
lamina=.venv/bin/lamina
out=${LAMINA_MAIN_OUT:-runs/main}
trials=${LAMINA_MAIN_TRIALS:-10}
limit=${LAMINA_MAIN_LIMIT:-24}
test_limit=${LAMINA_MAIN_TEST_LIMIT:-80}
mkdir -p "$out"
$lamina run --no-cache --arch examples/architectures/sample_vote.yaml "What is 17 + 25?"
$lamina search run --task arith-1 --space quick --strategy tpe --trials "$trials" --limit "$limit" \
  --min-examples 6 --threads 0 --root "$out" --name arith-1-quick
$lamina search report arith-1-quick --root "$out" --test --test-limit "$test_limit"
