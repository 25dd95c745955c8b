"""`python -m cxr` runs the command-line interface (also what torchrun launches)."""

from cxr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
