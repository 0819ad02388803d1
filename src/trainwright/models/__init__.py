"""Models and what scores and optimizes them: the built-in models, gpt, Hugging Face models, adapters, losses,
metrics, optimizers and parameter groups."""
