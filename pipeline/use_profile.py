"""Switch the active profile: rewrite ``profile`` and ``attributes`` in params.yaml in one command.

    python -m pipeline.use_profile celeba_hq                       # all of its catalog's attributes
    python -m pipeline.use_profile celeba_hq --attributes smiling,sad
    python -m pipeline.use_profile celeba_hq --all                 # catalog + custom_attributes

The file is edited in ruamel.yaml's round-trip mode (comments, order and layout kept), the result is
validated with :func:`pipeline.params.params_from_dict` before anything is written, and the write is
atomic (temporary file + rename). ``dvc exp run -S profile=... -S 'attributes=[...]'`` does the same
edit for a DVC experiment.
"""

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from pipeline.params import ParamsError, params_from_dict, parse_yaml


def _yaml() -> YAML:
    """Round-trip YAML with DVC's layout settings (default width), so DVC re-dumps the same text."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


def _catalog_names(data: Any, profile: str, with_custom: bool) -> list[str]:
    """Attribute names of a profile's catalog (and custom_attributes), as written in the raw YAML."""
    prof = (data.get("profiles") or {}).get(profile)
    if not isinstance(prof, dict):
        valid = ", ".join(data.get("profiles") or {})
        raise ParamsError([f"profile: unknown profile {profile!r}; valid: {valid}"])
    names = list((data.get("catalog") or {}).get(prof.get("catalog"), None) or {})
    custom = [n for n in (data.get("custom_attributes") or {}) if n not in names]
    return names + custom if with_custom else names


def _set_attributes(data: Any, names: list[str]) -> None:
    """Replace the attributes list in place, keeping its style (flow or block) and its comments.

    In block style ruamel attaches the comment lines that follow the list to its last item: they
    move to the new last item.
    """
    seq = data.get("attributes")
    if not isinstance(seq, CommentedSeq):
        seq = data["attributes"] = CommentedSeq()
        seq.fa.set_flow_style()
    tail = seq.ca.items.pop(len(seq) - 1, None) if len(seq) else None
    seq.ca.items.clear()
    del seq[:]
    seq.extend(names)
    if tail is not None and names:
        seq.ca.items[len(names) - 1] = tail


def _tidy_flow_list(text: str, key: str, names: list[str], width: int = 80) -> str:
    """Re-wrap a long top-level ``key: [a, b, ...]`` that ruamel wrapped raggedly (names never hold ']')."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}: [")), None)
    end = next((i for i in range(start, len(lines)) if "]" in lines[i]), None) if start is not None else None
    if end is None or start == end:
        return text
    rest = lines[end][lines[end].index("]") + 1 :]
    out, line = [], f"{key}: ["
    for i, name in enumerate(names):
        item = name + ("]" if i == len(names) - 1 else ",")
        if len(line) + 1 + len(item) > width and not line.endswith("["):
            out.append(line + "\n")
            line = "  " + item
        else:
            line += ("" if line.endswith("[") else " ") + item
    return "".join(lines[:start] + out + [line + rest] + lines[end + 1 :])


def _dump(yaml: YAML, data: Any) -> str:
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def switch_profile(
    path: str | Path, profile: str, attributes: list[str] | None = None, with_custom: bool = False
) -> tuple[str, str]:
    """The old and new text of params.yaml with ``profile``/``attributes`` set; validates the new one.

    ``attributes`` None means every catalog attribute of the profile (plus custom_attributes if
    ``with_custom``). Raises ParamsError if the result would not load.
    """
    path, yaml = Path(path), _yaml()
    old = path.read_text(encoding="utf-8")
    data = yaml.load(old)
    names = attributes if attributes is not None else _catalog_names(data, profile, with_custom)
    data["profile"] = profile
    _set_attributes(data, names)
    new = _tidy_flow_list(_dump(yaml, data), "attributes", names)
    params_from_dict(parse_yaml(new, str(path)), str(path))
    return old, new


def _describe(old: Any, new: Any) -> list[str]:
    keys = ("profile", "attributes")
    fmt = {"profile": str, "attributes": lambda v: "[" + ", ".join(v) + "]"}
    return [f"{k}: {fmt[k](old.get(k))} -> {fmt[k](new[k])}" for k in keys if old.get(k) != new[k]]


def main(argv: list[str] | None = None) -> int:
    """CLI: set profile and attributes in params.yaml (exit 2, file untouched, if the result is invalid)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.use_profile", description=main.__doc__)
    parser.add_argument("profile", help="a key of `profiles` in params.yaml")
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--attributes", help="comma-separated names (default: all of the catalog's)")
    choose.add_argument("--all", action="store_true", help="the catalog's attributes + custom_attributes")
    parser.add_argument("--path", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print, write nothing")
    args = parser.parse_args(argv)
    names = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
    try:
        old, new = switch_profile(args.path, args.profile, names, with_custom=args.all)
    except ParamsError as exc:
        print(f"{exc}\n{args.path} not changed.", file=sys.stderr)
        return 2
    changes = _describe(parse_yaml(old), parse_yaml(new))
    if not changes:
        print(f"{args.path}: already profile {args.profile!r} with these attributes; nothing to do.")
        return 0
    if not args.dry_run:
        atomic_write(Path(args.path), new)
    for line in changes:
        print(f"{args.path}: {line}")
    print("dry run: nothing written." if args.dry_run else "next: dvc repro   (or: dvc exp run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
