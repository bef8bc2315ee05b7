"""``python -m pipeline``: the ``hmhi-uvos`` command (see :mod:`pipeline.commands`)."""

from pipeline.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
