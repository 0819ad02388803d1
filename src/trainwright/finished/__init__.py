"""Using a finished run: load it, evaluate, predict (prediction files), generate text, export and plot."""
