"""`python -m searchapp.cli ARGS`: the same as `loupe ARGS`."""

from . import run

if __name__ == "__main__":
    run()
