"""Data: dataset preparation (``datasets``, ``archive``), images, Parquet latent shards and bulk inversion."""
