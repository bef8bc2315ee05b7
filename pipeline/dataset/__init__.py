"""The dataset build (the ``precompute_flow`` job): a video corpus -> optical flow -> WebDataset shards + index.

``config.py`` holds :class:`PrecomputeFlowConfig`, ``stages.py`` the Ray stages that run on the workers (load,
flow, encode, and packing and uploading whole shards), ``job.py`` the driver (``run``: plan groups, commit index
parts, consolidate). The shard format itself is ``pipeline/shards.py``; the flow engines are ``pipeline/flow/``.
"""
