"""Batch inference: stream videos through HMHI-Net on Ray and write masks back to storage (jobs/segment.py).

- :mod:`.config`: typed job configuration;
- :mod:`.source`: the CPU stage (decode, flow, chunks) run as Ray generator tasks;
- :mod:`.runner`: the model stage, a Ray Data actor stepping several videos at once;
- :mod:`.outputs`: per-video masks, RLE Parquet, soft maps, overlays and the done marker.
"""
