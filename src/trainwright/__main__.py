"""`python -m trainwright` (so `accelerate launch -m trainwright train ...` works)."""

from trainwright.cli import run

if __name__ == "__main__":
    run()
