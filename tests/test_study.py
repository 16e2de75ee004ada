"""User-study sheets (App. K.1) and the tally: seeded draws, a blind self-contained page with escaped text,
responses checked against the answer key (bad files rejected and counted), Table 1 percentages."""

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from asyrp.study import Condition, StudyError, build_study, tally
from asyrp.study.__main__ import main as study_cli
from asyrp.study.sheet import json_for_script
from pipeline.params import params_from_dict

from .pipeline_util import ROOT, tool_env
from .test_metrics import fake_outputs

EVIL = 'smiling <img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & "quotes"'


def write_folder(folder: Path, n: int, seed: int, size: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    return {k: write_folder(root / k, 10, s) for k, s in (("orig", 0), ("ours", 1), ("theirs", 2), ("church", 3))}


def conditions(folders, **kw):
    return [
        Condition("smiling", EVIL, folders["orig"], folders["ours"], folders["theirs"], group="in-domain", n_images=4),
        Condition(
            "temple",
            "temple",
            folders["church"],
            folders["ours"],
            folders["theirs"],
            group="church",
            n_images=8,
            group_size=4,
        ),
    ][: kw.get("n", 2)]


@pytest.fixture(scope="module")
def study(folders, tmp_path_factory):
    return build_study(conditions(folders), tmp_path_factory.mktemp("study"), ("Asyrp", "DiffusionCLIP"), seed=3)


def answers_for(key: dict, pick) -> list[dict]:
    """Answers choosing ``pick(set, question) -> 'A'|'B'`` (a method), translated to the set's left/right."""
    out = []
    for s in key["sets"]:
        for q in s["questions"]:
            want = pick(s, q)
            out.append({"set": s["set"], "question": q, "answer": "left" if s["left"] == want else "right"})
    return out


def response(key, who, pick, **extra) -> dict:
    return {"format": "asyrp-study-response", "version": 1, "study_id": key["study_id"], "participant": who,
            "submitted_at": "2024-01-01T00:00:00Z", "answers": answers_for(key, pick), **extra}  # fmt: skip


def write_csv_response(path: Path, r: dict) -> Path:
    cols = ["format", "version", "study_id", "participant", "submitted_at", "set", "question", "answer"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for a in r["answers"]:
            w.writerow([r["format"], r["version"], r["study_id"], r["participant"], r["submitted_at"],
                        a["set"], a["question"], a["answer"]])  # fmt: skip
    return path


# --- building ----------------------------------------------------------------------------------------------------


def test_sheet_is_blind_self_contained_and_escaped(study):
    page = study.sheet.read_text()
    key = json.loads(study.key.read_text())
    assert study.n_sets == 4 + 2 and len(key["sets"]) == 6
    assert study.n_questions == 4 * 3 + 2 * 4  # sets of four add the diversity question
    # blind: no method names, no image ids or folder names in the participant's page
    assert "Asyrp" not in page and "DiffusionCLIP" not in page and "theirs" not in page
    # self-contained: every image inline, no URL to fetch, a CSP that allows nothing else
    assert "http://" not in page and "https://" not in page and "url(" not in page
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # the script builds only a blob: download
    assert not re.findall(r'<[^>]*\b(?:src|href|action|srcset)\s*=\s*(?!["\']?data:)', markup)
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 3 * (4 * 1 + 2 * 4) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "default-src 'none'; img-src data:;" in page and "'unsafe-inline'" not in page
    # escaped: the prompt's markup is text, in the page and inside the JSON meta
    assert "<img src=x" not in page and "<script>window" not in page
    assert "smiling &lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;&lt;script&gt;" in page
    meta = re.search(r'<script type="application/json" id="study-meta">(.*?)</script>', page, re.S).group(1)
    assert "<" not in meta and json.loads(meta)["study_id"] == study.study_id
    assert json_for_script({"a": "</script><!--\u2028"}) == '{"a": "\\u003c/script\\u003e\\u003c!--\\u2028"}'


def test_answer_key_records_sides_groups_and_sources(study, folders):
    key = json.loads(study.key.read_text())
    assert key["methods"] == {"A": "Asyrp", "B": "DiffusionCLIP"} and key["study_id"] == study.study_id
    assert [s["set"] for s in key["sets"]] == [f"s{i:02d}" for i in range(1, 7)]
    for s in key["sets"]:
        assert {s["left"], s["right"]} == {"A", "B"}
        assert len(s["ids"]) == (4 if s["group"] == "church" else 1)
        assert ("diversity" in s["questions"]) == (s["group"] == "church")
    smiling_ids = [i for s in key["sets"] if s["attribute"] == "smiling" for i in s["ids"]]
    assert len(set(smiling_ids)) == 4  # drawn without replacement
    assert key["conditions"][0]["b"] == str(folders["theirs"]) and key["conditions"][0]["label"] == EVIL


def test_draw_is_seeded_and_conditions_are_independent(folders, tmp_path):
    a = build_study(conditions(folders), tmp_path / "a", seed=3)
    b = build_study(conditions(folders), tmp_path / "b", seed=3)
    c = build_study(conditions(folders), tmp_path / "c", seed=4)
    assert a.study_id == b.study_id and a.sheet.read_text() == b.sheet.read_text()
    assert c.study_id != a.study_id
    only = build_study(conditions(folders, n=1), tmp_path / "d", seed=3)
    pick = lambda f: sorted((tuple(s["ids"]), s["left"]) for s in f.sets if s["attribute"] == "smiling")  # noqa: E731
    assert pick(only) == pick(a)  # adding the church condition does not change the smiling draw
    many = build_study([Condition("x", "x", folders["orig"], folders["ours"], folders["theirs"], n_images=10)],
                       tmp_path / "e", seed=0)  # fmt: skip
    assert {s["left"] for s in many.sets} == {"A", "B"}  # sides are drawn per set


def test_build_errors_name_the_problem(folders, tmp_path):
    def cond(**kw):
        base = dict(attribute="a", label="a", original=folders["orig"], a=folders["ours"], b=folders["theirs"])
        return Condition(**{**base, **kw})

    with pytest.raises(StudyError, match="12 images requested but only 10 ids"):
        build_study([cond(n_images=12)], tmp_path)
    with pytest.raises(StudyError, match="multiple of group_size"):
        build_study([cond(n_images=6, group_size=4)], tmp_path)
    with pytest.raises(StudyError, match="image folder not found: .*nowhere"):
        build_study([cond(b=tmp_path / "nowhere")], tmp_path)
    with pytest.raises(StudyError, match="two different names"):
        build_study([cond()], tmp_path, methods=("X", "X"))
    bad = write_folder(tmp_path / "bad", 4, 9)
    (bad / "0000.png").write_bytes(b"not a png")
    with pytest.raises(StudyError, match="0000.png is not a readable image"):
        build_study([cond(original=bad, n_images=4)], tmp_path / "o")


# --- tally ----------------------------------------------------------------------------------------------------


def test_tally_percentages_match_the_answers(study, tmp_path):
    key = json.loads(study.key.read_text())
    # p1 prefers A everywhere; p2 prefers A only on quality; p3 (CSV) prefers B everywhere
    (tmp_path / "p1.json").write_text(json.dumps(response(key, "p1", lambda s, q: "A")))
    (tmp_path / "p2.json").write_text(json.dumps(response(key, "p2", lambda s, q: "A" if q == "quality" else "B")))
    write_csv_response(tmp_path / "p3.csv", response(key, "p3", lambda s, q: "B"))
    res = tally([tmp_path], study.key)
    assert [r.participant for r in res.accepted] == ["p1", "p2", "p3"] and not res.rejected
    rows = {(r["group"], r["question"]): r for r in res.rows}
    assert list(rows) == [("in-domain", q) for q in ("quality", "attribute", "overall")] + [
        ("church", q) for q in ("quality", "attribute", "diversity", "overall")
    ]
    q = rows[("in-domain", "quality")]
    assert q["n_votes"] == 3 * 4 and q["votes"] == {"Asyrp": 8, "DiffusionCLIP": 4}
    assert q["percent"]["Asyrp"] == pytest.approx(200 / 3)
    lo, hi = q["ci95"]["Asyrp"]
    assert lo < 200 / 300 < hi
    d = rows[("church", "diversity")]
    assert d["n_votes"] == 3 * 2 and d["percent"] == {
        "Asyrp": pytest.approx(100 / 3),
        "DiffusionCLIP": pytest.approx(200 / 3),
    }
    md = res.markdown()
    assert "| Asyrp | 66.67% [" in md and "in-domain: quality" in md and "| votes | 12 |" in md
    paths = res.write(tmp_path / "out")
    assert json.loads(paths["json"].read_text())["by_group"][0]["votes"] == {"Asyrp": 8, "DiffusionCLIP": 4}
    assert "church: diversity" in paths["md"].read_text() and paths["csv"].read_text().count("\n") == 1 + 2 * 2 * 7


def test_tally_rejects_bad_files_and_counts_them(study, tmp_path):
    key = json.loads(study.key.read_text())
    good = response(key, "p1", lambda s, q: "A")
    ans = good["answers"]
    unknown_set = ans + [{"set": "s99", "question": "quality", "answer": "left"}]
    bad_answer = [{**ans[0], "answer": "middle"}] + ans[1:]
    files = {
        "01-good.json": json.dumps(good),
        "02-not-json.json": "{nope",
        "03-wrong-format.json": json.dumps({**good, "format": "something-else"}),
        "04-dup-key.json": json.dumps(good)[:-1] + ', "participant": "p9"}',
        "05-twice.json": json.dumps({**good, "participant": "p5", "answers": ans + ans[:1]}),
        "06-other-study.json": json.dumps({**good, "participant": "p6", "study_id": "000000000000"}),
        "07-unknown-set.json": json.dumps({**good, "participant": "p7", "answers": unknown_set}),
        "08-bad-answer.json": json.dumps({**good, "participant": "p8", "answers": bad_answer}),
        "09-incomplete.json": json.dumps({**good, "participant": "p9", "answers": ans[:-1]}),
        "10-same-person.json": json.dumps({**good, "participant": " P1 "}),
        "11-bad.csv": "format,version\nasyrp-study-response,1\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    res = tally([tmp_path, tmp_path / "01-good.json"], study.key)
    kinds = {Path(r.path).name: r.kind for r in res.rejected}
    assert [r.participant for r in res.accepted] == ["p1"]
    assert kinds == {
        "02-not-json.json": "malformed",
        "03-wrong-format.json": "malformed",
        "04-dup-key.json": "malformed",
        "05-twice.json": "malformed",
        "06-other-study.json": "mismatched",
        "07-unknown-set.json": "mismatched",
        "08-bad-answer.json": "mismatched",
        "09-incomplete.json": "incomplete",
        "10-same-person.json": "duplicate",
        "11-bad.csv": "malformed",
        "01-good.json": "duplicate",  # the same file given twice
    }
    assert res.rejected_counts == {"malformed": 5, "mismatched": 3, "incomplete": 1, "duplicate": 2}
    assert "12 response file(s): 1 accepted, 11 rejected" in res.summary()
    reasons = {Path(r.path).name: r.reason for r in res.rejected}
    assert (
        "already counted from" in reasons["10-same-person.json"]
        and "1 of 20 questions" in reasons["09-incomplete.json"]
    )
    assert res.rows[0]["votes"] == {"Asyrp": 4, "DiffusionCLIP": 0}  # only the accepted file counts


def test_cli_build_from_spec_and_tally(folders, tmp_path, capsys):
    spec = {
        "title": "A <b>study</b>",
        "seed": 1,
        "methods": ["Asyrp", "DiffusionCLIP"],
        "conditions": [
            {
                "attribute": "smiling",
                "label": "smiling",
                "group": "in-domain",
                "n_images": 2,
                "original": str(folders["orig"]),
                "a": str(folders["ours"]),
                "b": str(folders["theirs"]),
            }
        ],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert study_cli(["build", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "s")]) == 0
    assert "A &lt;b&gt;study&lt;/b&gt;" in (tmp_path / "s" / "sheet.html").read_text()
    key = json.loads((tmp_path / "s" / "answer_key.json").read_text())
    resp = tmp_path / "r"
    resp.mkdir()
    (resp / "a.json").write_text(json.dumps(response(key, "a", lambda s, q: "A")))
    capsys.readouterr()
    assert (
        study_cli(["tally", "--key", str(tmp_path / "s" / "answer_key.json"), str(resp), "--out", str(tmp_path / "t")])
        == 0
    )
    out = capsys.readouterr().out
    assert "1 accepted, 0 rejected" in out and "| Asyrp | 100.00% [" in out and (tmp_path / "t" / "tally.md").exists()
    (resp / "b.json").write_text("garbage")
    args = ["tally", "--key", str(tmp_path / "s" / "answer_key.json"), str(resp)]
    assert study_cli(args) == 0 and study_cli([*args, "--strict"]) == 1
    assert "rejected" in capsys.readouterr().err
    assert study_cli(["tally", "--key", str(tmp_path / "s" / "answer_key.json"), str(resp / "b.json")]) == 2
    assert study_cli(["build", "--out", str(tmp_path / "x"), "--attribute", "a"]) == 2
    assert "--original, --a, --b" in capsys.readouterr().err


# --- the pipeline stage -------------------------------------------------------------------------------------------


def study_params(folder: Path) -> dict:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["profile"], data["attributes"] = "offline", ["red", "blue"]
    data["study"]["sheets"] = {
        "vs_other": {
            "method_b": "Other",
            "folder": str(folder),
            "attributes": {"red": "colours", "blue": "colours"},
            "labels": {"red": "red"},
            "n_images": 2,
        }
    }
    return data


def test_study_stage_builds_the_sheet_from_pipeline_outputs(tmp_path):
    from pipeline.stages import study

    out = fake_outputs(tmp_path / "outputs")
    other = tmp_path / "other"
    for a in ("red", "blue"):
        write_folder(other / a, 4, 5)
        for p in (other / a).glob("*.png"):  # the pipeline's ids are 00000..00003
            p.rename(p.with_name(f"0{p.name}"))
    summary = study.run(params_from_dict(study_params(other)), "vs_other", out)
    key = json.loads((out / "study" / "vs_other" / "answer_key.json").read_text())
    assert summary["n_sets"] == 4 and key["methods"] == {"A": "Asyrp", "B": "Other"}
    labels = {c["attribute"]: c["label"] for c in key["conditions"]}
    assert labels == {"red": "red", "blue": "a blue shape"}  # default label: the target prompt
    assert (out / "study" / "vs_other" / "sheet.html").stat().st_size > 1000
    with pytest.raises(ValueError, match="no sheet named 'nope'"):
        study.run(params_from_dict(study_params(other)), "nope", out)
    bad = study_params(other)
    bad["study"]["sheets"]["vs_other"]["attributes"] = {"green": "x"}
    with pytest.raises(ValueError, match="not among the pipeline's attributes"):
        study.run(params_from_dict(bad), "vs_other", out)


def test_dvc_makes_one_study_stage_per_sheet(tmp_path):
    """dvc.yaml's foreach over study.sheets: none by default, study@<name> once a sheet is configured."""
    for f in ("dvc.yaml", "params.yaml"):
        (tmp_path / f).write_text((ROOT / f).read_text())
    run = lambda *a: subprocess.run(["dvc", *a], cwd=tmp_path, env=tool_env(), capture_output=True, text=True)  # noqa: E731
    assert run("init", "--no-scm", "-q").returncode == 0
    listed = run("stage", "list")
    assert listed.returncode == 0 and "study@" not in listed.stdout and "evaluate@red" in listed.stdout
    data = study_params(Path("data/other"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    listed = run("stage", "list")
    assert listed.returncode == 0, listed.stderr
    assert "study@vs_other" in listed.stdout
