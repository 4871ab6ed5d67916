"""Learned verifiers: sample a task's split, label the samples with the task's scorer, read the generator's hidden
states, train and evaluate a probe (`lamina verifier train | eval`). The verifier file and its scoring live in
lamina.rewards.learned (a reward model any layer can use); this package is the training side (it runs
architectures and scorers, so it sits with eval above them)."""
