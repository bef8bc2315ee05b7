"""Batch inference: stream videos through HMHI-Net and write masks back to storage (jobs/segment.py).

- :mod:`.config`: typed job configuration (and the ``official`` preset);
- :mod:`.segmenter`: :class:`VideoSegmenter`, one video at a time without Ray (preprocessing, flow, model, output);
- :mod:`.source`: the CPU stage (decode, flow, chunks), run as Ray generator tasks by the job;
- :mod:`.runner`: the model stage, a Ray actor stepping several videos at once through a VideoSegmenter;
- :mod:`.outputs`: per-video masks, RLE Parquet, soft maps, overlays and the done marker;
- :mod:`.job`: the job's ``run(cfg)`` and its CLI ``FLAGS``.
"""

from pipeline.segment.segmenter import VideoSegmenter

__all__ = ["VideoSegmenter"]
