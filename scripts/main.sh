#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct), from a fresh machine:
# set up, answer one question with an inference-time architecture, then score one plain call against
# 8 samples + majority vote and against 8 sampled programs executed in the sandbox + a vote over what they print
# (program-aided) on the bundled arith-1 task (dev split), and compare them (table + PNG).
# Rerunning resumes finished work instead of redoing it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
lamina=.venv/bin/lamina
out=${LAMINA_MAIN_OUT:-runs/main}
limit=${LAMINA_MAIN_LIMIT:-69}
mkdir -p "$out"
$lamina run --no-cache --arch examples/architectures/sample_vote.yaml "What is 17 + 25?"
$lamina eval --model default --task arith-1 --split dev --limit "$limit" --runs-dir "$out" --name greedy
$lamina eval --arch examples/architectures/sample_vote.yaml --task arith-1 --split dev --limit "$limit" \
  --runs-dir "$out" --name vote8
$lamina eval --arch examples/architectures/program_vote.yaml --task arith-1 --split dev --limit "$limit" \
  --runs-dir "$out" --name program8
$lamina report "$out/greedy.sqlite" "$out/vote8.sqlite" "$out/program8.sqlite" --plot "$out/report.png" \
  --title "SmolLM2-135M on arith-1 (dev): one call vs 8 samples + vote vs 8 programs + vote"
