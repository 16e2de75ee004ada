"""Stage `report`: one table across attributes, in the form of the paper's Tables 2 and 4.

outputs/report/report.md    Table 2 (prompts, CLIP similarity, t_edit, t_boost; paper values beside ours),
                            Tables 4/5 (S_dir, SC, LPIPS; the paper's numbers beside ours where it has
                            them), the LPIPS curves and every attribute's grid
outputs/report/report.csv   the same numbers, one row per attribute
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from ..common import OUT, Layout, read_json, stage_main, write_csv
from ..params import Params


def _fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _md(text) -> str:
    """Text (a prompt) as Markdown shows it literally: HTML escaped (it would render), no line breaks."""
    return html.escape(str(text), quote=False).replace("\r", " ").replace("\n", " ")


def _cell(text) -> str:
    """A Markdown table cell: `_md`, and ``|`` escaped (it would start a new column)."""
    return _md(text).replace("|", "\\|")


def _ci(m: dict | None, digits=3, pct=False) -> str:
    if not m:
        return "–"
    k = 100 if pct else 1
    return f"{k * m['mean']:.{digits}f}{'%' if pct else ''} ± {k * m['ci95']:.{digits}f}"


# Tables 4 and 5 of the paper (App. K.2): (S_dir, SC %) per attribute, Asyrp and DiffusionCLIP.
PAPER_TABLE45 = {
    "celeba_hq": {
        "smiling": ((0.921, 89.02), (0.813, 91.41)),
        "sad": ((0.964, 88.90), (0.760, 89.93)),
        "tanned": ((0.991, 85.71), (0.888, 92.85)),
        "pixar": ((0.956, 76.51), (0.811, 89.91)),
        "neanderthal": ((0.805, 79.03), (0.661, 81.23)),
    },
    "lsun_church": {
        "department_store": ((0.778, 57.62), (0.661, 54.50)),
        "asian_tower": ((0.943, 62.65), (0.907, 64.82)),  # Table 5's "ancient"
        "red_brick": ((0.989, 65.83), (0.964, 65.02)),
    },
}


def collect(params: Params, out: Path) -> list[dict]:
    lay, rows = Layout(out), []
    for attr in params.attributes:
        sched, ev = read_json(lay.train(attr).schedule_json), read_json(lay.evaluate(attr).metrics_json)
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
                "sc": (ev.get("sc") or {}).get("mean"),
                "sc_ci95": (ev.get("sc") or {}).get("ci95"),
                "sc_reference": ev.get("sc_reference"),
                "segmenter_is_pretrained": ev.get("segmenter_is_pretrained"),
                "lpips_edit": (ev.get("lpips_edit") or {}).get("mean"),
                "lpips_recon": (ev.get("lpips_recon") or {}).get("mean"),
                "clip_is_pretrained": ev["clip_is_pretrained"],
                "lpips_is_paper_metric": ev.get("lpips_is_paper_metric"),
                "_ev": ev,
            }
        )
    return rows


def markdown(params: Params, rows: list[dict], out: Path) -> str:
    lay = Layout(out)
    rel = lambda p: os.path.relpath(p, lay.report.folder)  # noqa: E731
    prof = params.active_profile
    lines = [f"# Asyrp report: profile `{params.profile}` ({prof.model.id}, {prof.model.image_size}px)", ""]
    warn = []
    if any(not r["clip_is_pretrained"] for r in rows):
        warn.append("the evaluation CLIP has random weights: S_dir values are not meaningful")
    if any(r["lpips_is_paper_metric"] is False for r in rows):
        warn.append("LPIPS uses a random backbone: not the paper's metric")
    if any(r["segmenter_is_pretrained"] is False for r in rows):
        warn.append("the segmenter has random weights: SC values are not meaningful")
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
            f"| {r['attribute']} | {_cell(r['source'])} | {_cell(r['target'])} | {_fmt(r['clip_similarity'])} | "
            f"{r['t_edit']} | {r['t_boost']} | {r['chosen_by']} | {_fmt(r['paper_clip_similarity'])} | "
            f"{_fmt(r['paper_t_edit'])} | {_fmt(r['paper_t_boost'])} |"
        )
    lines += [
        "",
        "## Tables 4/5: directional CLIP similarity, segmentation consistency, preservation (mean ± 95% CI)",
        "",
        "SC: pixel accuracy of the segmentation maps of the "
        + ("reconstruction" if any(r["sc_reference"] == "recon" for r in rows) else "original")
        + " and the edited image (%); SC(orig, recon) is what inversion and generation alone keep.",
        "",
        "| attribute | n | S_dir | SC | SC(orig, recon) | LPIPS(orig, edit) | LPIPS(orig, recon) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ev = r["_ev"]
        lines.append(
            f"| {r['attribute']} | {r['n']} | {_ci(ev['s_dir'])} | {_ci(ev.get('sc'), 2, pct=True)} | "
            f"{_ci(ev.get('sc_recon'), 2, pct=True)} | {_ci(ev.get('lpips_edit'))} | {_ci(ev.get('lpips_recon'))} |"
        )
    lines += paper_layout(params, rows)
    lines += [
        "",
        "## LPIPS curves (Sec. 4)",
        "",
        f"![curves]({rel(lay.schedule.curves_png)})",
        "",
        "## Edits (rows: original, reconstruction, edited)",
        "",
    ]
    for r in rows:
        edit, trained = lay.edit(r["attribute"]), lay.train(r["attribute"])
        lines += [
            f"### {r['attribute']}: '{_md(r['source'])}' -> '{_md(r['target'])}'",
            "",
            f"![grid]({rel(edit.grid)})  ",
            f"![sweep]({rel(edit.strip)})",
            f"![loss]({rel(trained.loss_png)})",
            "",
        ]
    return "\n".join(lines) + "\n"


def paper_layout(params: Params, rows: list[dict]) -> list[str]:
    """Tables 4/5 as the paper lays them out: one column pair (S_dir, SC) per attribute, one row per method."""
    paper = PAPER_TABLE45.get(params.active_profile.catalog, {})
    if not rows:
        return []
    head = " | ".join(f"{r['attribute']} S_dir | {r['attribute']} SC" for r in rows)
    out = ["", "In the paper's layout (its numbers where it reports the attribute):", ""]
    out += [f"| method | {head} |", "|---" * (2 * len(rows) + 1) + "|"]
    ours = " | ".join(f"{_fmt(r['s_dir'])} | {_fmt(None if r['sc'] is None else 100 * r['sc'], 2)}" for r in rows)
    out.append(f"| Asyrp (this run) | {ours} |")
    if any(r["attribute"] in paper for r in rows):
        for k, name in ((0, "Asyrp (paper)"), (1, "DiffusionCLIP (paper)")):
            cells = []
            for r in rows:
                s_dir, sc = paper[r["attribute"]][k] if r["attribute"] in paper else (None, None)
                cells.append(f"{_fmt(s_dir)} | {_fmt(sc, 2)}")
            out.append(f"| {name} | {' | '.join(cells)} |")
    return out


def run(params: Params, out: Path = OUT) -> dict:
    where = Layout(out).report
    rows = collect(params, out)
    where.folder.mkdir(parents=True, exist_ok=True)
    where.report_md.write_text(markdown(params, rows, out))
    write_csv(where.report_csv, [{k: v for k, v in r.items() if k != "_ev"} for r in rows])
    print(where.report_md.read_text().split("## LPIPS curves")[0])
    return {"attributes": [r["attribute"] for r in rows]}


main = stage_main(run, __doc__.splitlines()[0])

if __name__ == "__main__":
    main()
