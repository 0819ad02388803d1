"""`python -m trainwright` (so `accelerate launch -m trainwright train ...` works). The signal handling comes
first: a signal while the command is still importing is one message and its exit code, not a traceback."""

import sys

if __name__ == "__main__":
    from trainwright.run import interrupts

    interrupts.install()
    try:
        from trainwright.cli import run
    except (KeyboardInterrupt, interrupts.Stopped) as signalled:
        sys.exit(interrupts.ending(signalled, sys.argv[1:]))
    run()
