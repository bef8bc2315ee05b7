"""The export job (:mod:`.config`, :mod:`.job`; ``jobs/export.py`` is its command line): segment's finished videos
written in the interchange formats of :mod:`pipeline.formats`."""
