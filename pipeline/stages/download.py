"""Stage `download`: the profile's dataset -> outputs/data/{images/*.png, manifest.csv, report.json}.

Sources: the toy world (`toy`: procedural shapes with known factors, see `asyrp.toy`); procedural
shapes (`synthetic`, the plumbing profile); a local folder (`folder`, or
`data/<source>` when it exists: put images there and `dvc add data`); otherwise the registry entry of the
paper's dataset (documented URL, verified checksum, cached under $ASYRP_DATA_CACHE). Every bad file is
converted or skipped with its reason counted in report.json. The stage is `always_changed` in dvc.yaml:
raw data can change outside DVC, and identical outputs leave every downstream stage untouched.
"""

from __future__ import annotations

from pathlib import Path

from asyrp.data.datasets import prepare_dataset

from ..common import OUT, Layout, stage_main
from ..params import Params


def dataset_source(params: Params) -> str | dict:
    """What `prepare_dataset` reads for the active profile."""
    ds = params.active_profile.dataset
    if ds.source in ("toy", "synthetic"):  # generated: never read from a folder
        return ds.source
    folder = Path(ds.path or f"data/{ds.source}")
    if ds.source == "folder" or folder.is_dir():
        if not folder.is_dir():
            raise FileNotFoundError(f"profiles.{params.profile}.dataset.path: folder {folder} does not exist")
        return {"kind": "folder", "path": str(folder)}
    return ds.source


def run(params: Params, out: Path = OUT) -> dict:
    inv, folder = params.active_inversion, Layout(out).download.folder
    n_needed = inv.n_train_images + inv.n_test_images
    n_images = params.active_profile.dataset.n_images or n_needed
    report = prepare_dataset(
        dataset_source(params), folder, params.active_profile.model.image_size, n_images, seed=inv.seed
    )
    n_ok = report.get("written", report.get("ok", 0) + report.get("converted", 0))
    return {"images": n_ok, "skipped": report.get("skipped", 0), "needed": n_needed}


main = stage_main(run, __doc__.splitlines()[0])

if __name__ == "__main__":
    main()
