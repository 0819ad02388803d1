"""`python -m trainwright` (so `accelerate launch -m trainwright train ...` works)."""

from trainwright.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
