"""CLI: ``python -m asyrp.study build ...`` and ``python -m asyrp.study tally ...``.

Build from a spec file (YAML or JSON; relative paths are relative to the spec file)::

    title: Asyrp vs DiffusionCLIP
    seed: 0
    methods: [Asyrp, DiffusionCLIP]     # A, B: names appear only in the answer key and the tally
    n_images: 8                         # defaults for every condition
    group_size: 1
    conditions:
      - {attribute: smiling, label: smiling, group: CelebA-HQ in-domain,
         original: originals/, a: asyrp/smiling/, b: diffusionclip/smiling/}
      - {attribute: department_store, label: department store, group: LSUN-church,
         original: church/, a: asyrp/department_store/, b: diffusionclip/department_store/,
         n_images: 12, group_size: 4}

    python -m asyrp.study build spec.yaml --out study/
    python -m asyrp.study build --attribute smiling --label smiling --original DIR --a DIR --b DIR --out study/

Tally (files and/or folders of exported responses)::

    python -m asyrp.study tally --key study/answer_key.json responses/ --out study/tally [--strict]

Exit status: 0 done; 1 with ``--strict`` when a response file was rejected; 2 on an error (bad spec, missing
images, unreadable key, no response accepted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .sheet import Condition, StudyError, build_study
from .tally import tally

SPEC_KEYS = {"title", "intro", "seed", "methods", "n_images", "group_size", "conditions"}
CONDITION_KEYS = {"attribute", "label", "group", "original", "a", "b", "n_images", "group_size"}


def _load_spec(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise StudyError(f"{path}: cannot read the study spec: {err}") from None
    if not isinstance(spec, dict):
        raise StudyError(f"{path}: the spec must be a mapping")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown keys {sorted(unknown)}; valid: {sorted(SPEC_KEYS)}")
    if not isinstance(spec.get("conditions"), list) or not spec["conditions"]:
        raise StudyError(f"{path}: 'conditions' must be a non-empty list")
    return spec


def conditions_from_spec(spec: dict, base: Path) -> list[Condition]:
    out = []
    for i, c in enumerate(spec["conditions"]):
        if not isinstance(c, dict):
            raise StudyError(f"conditions[{i}]: must be a mapping")
        unknown, missing = set(c) - CONDITION_KEYS, {"attribute", "original", "a", "b"} - set(c)
        if unknown or missing:
            raise StudyError(f"conditions[{i}]: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        out.append(
            Condition(
                attribute=str(c["attribute"]),
                label=str(c.get("label") or c["attribute"]),
                original=base / c["original"],
                a=base / c["a"],
                b=base / c["b"],
                group=c.get("group"),
                n_images=int(c.get("n_images", spec.get("n_images", 8))),
                group_size=int(c.get("group_size", spec.get("group_size", 1))),
            )
        )
    return out


def cmd_build(args) -> int:
    if args.spec:
        spec = _load_spec(Path(args.spec))
        conditions = conditions_from_spec(spec, Path(args.spec).parent)
    else:
        need = [f"--{k}" for k in ("attribute", "original", "a", "b") if getattr(args, k) is None]
        if need:
            raise StudyError(f"give a spec file, or {', '.join(need)}")
        spec = {}
        conditions = [
            Condition(
                args.attribute,
                args.label or args.attribute,
                Path(args.original),
                Path(args.a),
                Path(args.b),
                args.group,
                args.n_images,
                args.group_size,
            )
        ]
    methods = spec.get("methods") or [args.method_a, args.method_b]
    if not isinstance(methods, list) or len(methods) != 2:
        raise StudyError("methods must be a list of two names [A, B]")
    kwargs = {k: spec[k] for k in ("title", "intro") if k in spec}
    files = build_study(conditions, args.out, tuple(map(str, methods)), int(spec.get("seed", args.seed)), **kwargs)
    print(
        f"study {files.study_id}: {files.n_sets} sets, {files.n_questions} questions\n"
        f"  give participants: {files.sheet}\n  keep (answer key): {files.key}"
    )
    return 0


def cmd_tally(args) -> int:
    result = tally(args.responses, args.key)
    for r in result.rejected:
        print(f"rejected {r.path}: {r.kind}: {r.reason}", file=sys.stderr)
    print(result.summary())
    if not result.accepted:
        print("error: no response was accepted", file=sys.stderr)
        return 2
    print(f"\nBy group (Table 1), {len(result.accepted)} participant(s), 95% Wilson intervals:\n")
    print(result.markdown())
    if args.out:
        paths = result.write(args.out)
        print("written: " + ", ".join(str(p) for p in paths.values()))
    return 1 if args.strict and result.rejected else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m asyrp.study", description="User-study sheets (App. K.1) and tally")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write sheet.html (participants) and answer_key.json (organiser)")
    b.add_argument("spec", nargs="?", help="study spec (YAML/JSON); or the single-condition flags below")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--attribute")
    b.add_argument("--label", help="attribute as participants read it (default: --attribute)")
    b.add_argument("--group", help="Table 1 column group (default: the attribute)")
    b.add_argument("--original", help="folder of original images <id>.png")
    b.add_argument("--a", help="folder of method A's images <id>.png")
    b.add_argument("--b", help="folder of method B's images <id>.png")
    b.add_argument("--n-images", type=int, default=8)
    b.add_argument("--group-size", type=int, default=1)
    b.add_argument("--method-a", default="Asyrp")
    b.add_argument("--method-b", default="DiffusionCLIP")
    b.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tally", help="count response files against the answer key")
    t.add_argument("responses", nargs="+", help="response files (.json/.csv) or folders of them")
    t.add_argument("--key", required=True, help="answer_key.json written by build")
    t.add_argument("--out", help="folder for tally.json, tally.csv, tally.md")
    t.add_argument("--strict", action="store_true", help="exit 1 if any response file was rejected")
    args = ap.parse_args(argv)
    try:
        return cmd_build(args) if args.cmd == "build" else cmd_tally(args)
    except (StudyError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
