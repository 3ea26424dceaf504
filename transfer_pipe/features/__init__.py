"""Batched frozen forward passes and the per-shard work that runs on Dask workers."""
