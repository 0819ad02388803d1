"""trainwright: recipe-driven PyTorch training on HuggingFace Accelerate."""

__version__ = "0.1.0"
