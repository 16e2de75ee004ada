"""Serve the flows as deployments against a Prefect server (PREFECT_API_URL):

python -m flows.serve            # deployments reproduce/offline, new-attribute/offline, edit/offline
prefect deployment run 'new-attribute/offline' -p source='a shape' -p target='a green shape'
"""

from __future__ import annotations

import argparse

from prefect import serve

from .flows import edit_images, new_attribute, reproduce


def deployments(
    name: str = "offline", profile: str | None = None, params_path: str = "params.yaml", out: str = "outputs"
):
    common = {"params_path": params_path, "out": out}
    prof = {"profile": profile} if profile else {}
    return [
        reproduce.to_deployment(name=name, parameters={**common, **prof}),
        new_attribute.to_deployment(name=name, parameters={**common, **prof}),
        edit_images.to_deployment(name=name, parameters={"params_path": params_path, **prof}),
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="serve the asyrp flows as Prefect deployments")
    ap.add_argument("--name", default="offline", help="deployment name (flow/<name>)")
    ap.add_argument("--profile", default=None, help="params.yaml profile (default: the file's)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="outputs")
    args = ap.parse_args(argv)
    serve(*deployments(args.name, args.profile, args.params, args.out), limit=1)


if __name__ == "__main__":
    main()
