"""Evaluation: score an architecture on a task (harness), keep results (run store), summarise (stats, report),
score answers (scorers, LLM judge); `lamina eval` / `lamina report` (cli)."""
