"""Training of HMHI-Net with Ray Train DDP from the data pipeline's WebDataset shards.

- :mod:`pipeline.train.config`   typed job config (model, data, augment, loss, optim, checkpoint, validation)
- :mod:`pipeline.train.sampler`  the official 5-frame clip sampler
- :mod:`pipeline.train.augment`  official per-frame flips + RGB photometric jitter (or clip-consistent flips), resize
- :mod:`pipeline.train.losses`   20*focal + 10*BCE + Dice per frame, summed over the clip
- :mod:`pipeline.train.epochs`   the even, hang-free split of an epoch's samples between ranks (from the index alone)
- :mod:`pipeline.train.data`     per-worker shard streaming over that split with an exact resume position
- :mod:`pipeline.train.validate` validation J&F with :mod:`pipeline.evaluate`
- :mod:`pipeline.train.metrics`  CSV + TensorBoard in the run directory (through :mod:`pipeline.storage`)
- :mod:`pipeline.train.trainer`  ``Trainer``: one rank's model, optimiser, schedule, steps, metrics, validation and
                                 checkpoint state (no Ray: one process needs no process group)
- :mod:`pipeline.train.loop`     ``train_loop_per_worker(config)``: the Ray Train worker driving a ``Trainer``
- :mod:`pipeline.train.job`      the job: input checks before any worker starts, ``TorchTrainer``, the summary
"""
