"""Stage `study@<name>`: a user-study sheet (App. K.1) comparing our edits with method B's images.

outputs/study/<name>/sheet.html         for participants: self-contained (images inlined), no network,
                                        left/right drawn per set, no method names
outputs/study/<name>/answer_key.json    for the organiser: which method is left in every set; `tally` needs it
outputs/study/<name>/summary.json       study id, sets, questions

params.yaml `study.sheets.<name>`: method B's name, its image folder (``<folder>/<layout>/<id>.png``, layout
``{attribute}`` by default, the same test image ids as outputs/latents/test) and the attributes to include,
each with its Table 1 group. Originals are the test images; method A is outputs/attributes/<a>/edit/images.
Collect the participants' exported files and run ``python -m asyrp.study tally --key
outputs/study/<name>/answer_key.json <files or folder>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asyrp.data.latents import LatentStore
from asyrp.study import Condition, StudyError, build_study

from ..common import OUT, Layout, check_dvc_layout, read_json, run_cli, write_json
from ..params import Params, load_params


def run(params: Params, name: str, out: Path = OUT, root: Path = Path(".")) -> dict:
    """Build sheet ``name`` of params.study.sheets; ``root``: what relative method-B folders are relative to."""
    st = params.study
    if name not in st.sheets:
        valid = ", ".join(st.sheets) or "(none: study.sheets is empty)"
        raise ValueError(f"study.sheets: no sheet named {name!r}; sheets: {valid}")
    sheet, lay = st.sheets[name], Layout(out)
    missing = [a for a in sheet.attributes if a not in params.attributes]
    if missing:
        raise ValueError(
            f"study.sheets.{name}.attributes: {missing} are not among the pipeline's attributes "
            f"({', '.join(params.attributes)}): only edited attributes can go into a study"
        )
    store = LatentStore(lay.invert.split("test"))
    conditions = []
    for attr, group in sheet.attributes.items():
        edited = lay.edit(attr).images
        n_edited = read_json(lay.edit(attr).summary_json)["n_edited"]
        ids = store.ids[:n_edited]
        images = store.get(ids, ["image"])["image"].permute(0, 2, 3, 1).contiguous().numpy()  # (B, H, W, 3) uint8
        originals = {i: images[k] for k, i in enumerate(ids)}
        folder_b = Path(sheet.folder)
        folder_b = folder_b if folder_b.is_absolute() else root / folder_b
        conditions.append(
            Condition(
                attribute=attr,
                label=sheet.labels.get(attr) or params.attribute(attr).target,
                original=originals,
                a=edited,
                b=folder_b / sheet.layout.replace("{attribute}", attr),
                group=group,
                n_images=sheet.n_images or st.n_images,
                group_size=sheet.group_size or st.group_size,
            )
        )
    folder = lay.study(name).folder
    files = build_study(
        conditions,
        folder,
        methods=(st.method_a, sheet.method_b),
        seed=st.seed if sheet.seed is None else sheet.seed,
        title=sheet.title or "Image editing study",
    )
    summary = {
        "study_id": files.study_id,
        "n_sets": files.n_sets,
        "n_questions": files.n_questions,
        "methods": {"A": st.method_a, "B": sheet.method_b},
        "attributes": dict(sheet.attributes),
        "sheet": str(files.sheet),
        "answer_key": str(files.key),
    }
    write_json(lay.study(name).summary_json, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="a key of study.sheets in params.yaml")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    def call() -> dict:
        params = load_params(args.params)
        check_dvc_layout(params)
        return run(params, args.name, Path(args.out), Path(args.params).resolve().parent)

    run_cli(call, (StudyError,))


if __name__ == "__main__":
    main()
