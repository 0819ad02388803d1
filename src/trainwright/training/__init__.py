"""Training: from a recipe to the Trainer (start.py), the loop (trainer.py), validation, callbacks, EMA, early
stopping, the start-up check and the learning-rate range test."""
