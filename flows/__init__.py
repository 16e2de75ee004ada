"""Prefect flows over the pipeline's stage functions: reproduce, new-attribute, edit (see flows.flows)."""
