"""The DVC stage entry points (pipeline.stages), their params (params, blocks), output layout and tracking."""
