"""`python -m benchmarks`: trainwright against the tutorials' loops, plain PyTorch, Accelerate and PyTorch
Lightning on the same synthetic data in one run, plus start-up and checkpoint-stall seconds.

Modules: workloads (what is trained, at which size), synthetic (the data files), rows (one epoch of
each loop), child (one row in a fresh process), measure (repeats, subprocesses, medians), startup,
checkpoints (the large-state case), report (the tables)."""
