"""The DVC stages, one module each: ``python -m pipeline.stages.<stage>`` runs it (see dvc.yaml).

Each module exposes ``run(params, [attribute,] out=OUT) -> dict`` (what the Prefect flows call) and ``main``.
"""
