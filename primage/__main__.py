"""``python -m primage``: the same command line as the ``primage`` console script."""

from primage.cli import run

if __name__ == "__main__":
    run()
