"""Comparing recipes: sweeps as DVC experiments (one machine's queue or a Dask cluster) and the
Pareto front they draw. Shipping one of them is `pipeline.release`'s job."""
