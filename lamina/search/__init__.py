"""Architecture search: a YAML search space over specs, Optuna samplers (TPE, NSGA-II, random, grid) and Archon's
greedy construction, successive halving over examples, resumable and distributed studies, and a report."""
