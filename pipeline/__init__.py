"""hmhi-uvos data pipeline: storage, config, flow, shards, evaluation."""
