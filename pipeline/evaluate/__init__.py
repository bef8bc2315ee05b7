"""The evaluation job (:mod:`.config`, :mod:`.job`; ``jobs/evaluate.py`` is its command line): dataset scoring from
storage (:mod:`.dataset`) and ``report.html`` (:mod:`.report`). The J and F measures themselves are the shared
library :mod:`pipeline.metrics` (training's validation uses them too)."""
