"""Many runs of one recipe: k-fold cross-validation (cv.py) and hyperparameter sweeps (sweep.py), each run
an ordinary run dir trained by `trainwright train` in a process of its own (runner.py)."""
