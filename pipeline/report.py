"""Stage `report`: one table across attributes, in the form of the paper's Tables 2 and 4.

outputs/report/report.md    Table 2 (prompts, CLIP similarity, t_edit, t_boost; paper values beside ours),
                            Table 4 (S_dir, LPIPS), the LPIPS curves and every attribute's grid
outputs/report/report.csv   the same numbers, one row per attribute
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import OUT, Paths, read_json, stage_main, write_csv
from .params import Params


def _fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _ci(m: dict | None, digits=3, pct=False) -> str:
    if not m:
        return "–"
    k = 100 if pct else 1
    return f"{k * m['mean']:.{digits}f} ± {k * m['ci95']:.{digits}f}"


def collect(params: Params, out: Path) -> list[dict]:
    paths, rows = Paths(out), []
    for attr in params.attributes:
        base = paths.attribute(attr)
        sched, ev = read_json(base / "train" / "schedule.json"), read_json(base / "evaluate" / "metrics.json")
        paper = sched.get("paper") or {}
        rows.append(
            {
                "attribute": attr,
                "source": sched["source"],
                "target": sched["target"],
                "clip_similarity": sched["clip_similarity"],
                "t_edit": sched["t_edit"],
                "t_boost": sched["t_boost"],
                "chosen_by": sched["chosen_by"],
                "paper_clip_similarity": paper.get("clip_similarity"),
                "paper_t_edit": paper.get("t_edit"),
                "paper_t_boost": paper.get("t_boost"),
                "s_dir": ev["s_dir"]["mean"],
                "s_dir_ci95": ev["s_dir"]["ci95"],
                "n": ev["s_dir"]["n"],
                "lpips_edit": (ev.get("lpips_edit") or {}).get("mean"),
                "lpips_recon": (ev.get("lpips_recon") or {}).get("mean"),
                "clip_is_pretrained": ev["clip_is_pretrained"],
                "lpips_is_paper_metric": ev.get("lpips_is_paper_metric"),
                "_ev": ev,
            }
        )
    return rows


def markdown(params: Params, rows: list[dict], out: Path) -> str:
    paths = Paths(out)
    rel = lambda p: os.path.relpath(p, paths.report)  # noqa: E731
    prof = params.active_profile
    lines = [f"# Asyrp report: profile `{params.profile}` ({prof.model.id}, {prof.model.image_size}px)", ""]
    warn = []
    if any(not r["clip_is_pretrained"] for r in rows):
        warn.append("the evaluation CLIP has random weights: S_dir values are not meaningful")
    if any(r["lpips_is_paper_metric"] is False for r in rows):
        warn.append("LPIPS uses a random backbone: not the paper's metric")
    lines += [f"> **Note:** {w}." for w in warn] + ([""] if warn else [])
    lines += [
        "## Table 2: prompts, CLIP similarity, t_edit, t_boost",
        "",
        "| attribute | source | target | CLIP sim. | t_edit | t_boost | chosen by "
        "| paper sim. | paper t_edit | paper t_boost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attribute']} | {r['source']} | {r['target']} | {_fmt(r['clip_similarity'])} | {r['t_edit']} | "
            f"{r['t_boost']} | {r['chosen_by']} | {_fmt(r['paper_clip_similarity'])} | "
            f"{_fmt(r['paper_t_edit'])} | {_fmt(r['paper_t_boost'])} |"
        )
    lines += [
        "",
        "## Table 4: directional CLIP similarity and preservation (mean ± 95% CI)",
        "",
        "| attribute | n | S_dir | LPIPS(orig, edit) | LPIPS(orig, recon) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ev = r["_ev"]
        lines.append(
            f"| {r['attribute']} | {r['n']} | {_ci(ev['s_dir'])} | {_ci(ev.get('lpips_edit'))} | "
            f"{_ci(ev.get('lpips_recon'))} |"
        )
    lines += [
        "",
        "## LPIPS curves (Sec. 4)",
        "",
        f"![curves]({rel(paths.schedule / 'curves.png')})",
        "",
        "## Edits (rows: original, reconstruction, edited)",
        "",
    ]
    for r in rows:
        base = paths.attribute(r["attribute"])
        lines += [
            f"### {r['attribute']}: '{r['source']}' -> '{r['target']}'",
            "",
            f"![grid]({rel(base / 'edit' / 'grid.png')})  ",
            f"![sweep]({rel(base / 'edit' / 'strip.png')})",
            f"![loss]({rel(base / 'train' / 'loss.png')})",
            "",
        ]
    return "\n".join(lines) + "\n"


def run(params: Params, out: Path = OUT) -> dict:
    paths = Paths(out)
    rows = collect(params, out)
    paths.report.mkdir(parents=True, exist_ok=True)
    (paths.report / "report.md").write_text(markdown(params, rows, out))
    write_csv(paths.report / "report.csv", [{k: v for k, v in r.items() if k != "_ev"} for r in rows])
    print((paths.report / "report.md").read_text().split("## LPIPS curves")[0])
    return {"attributes": [r["attribute"] for r in rows]}


main = stage_main(run, __doc__.splitlines()[0])

if __name__ == "__main__":
    main()
