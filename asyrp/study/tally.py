"""Tally user-study responses against the answer key: preference percentages per group and question (Table 1).

    result = tally(["responses/p1.json", "responses/p2.csv"], "study/answer_key.json")
    print(result.markdown())          # rows: methods; columns: group x question; "75.0% [53.1, 88.8]"
    result.write("study/tally")       # tally.json, tally.csv, tally.md

A response file (exported by the sheet, JSON or CSV) is accepted only if it is well formed, belongs to this
study (same study id, only known sets and questions, answers left/right), answers every question exactly
once, and comes from a participant not already counted. Anything else is rejected as ``malformed``,
``mismatched``, ``incomplete`` or ``duplicate`` with a message, counted, and never mixed into the numbers.

Percentages are shares of votes; the 95% intervals are Wilson score intervals over votes, which treats
votes as independent (votes of one participant are not: read the intervals as a lower bound on the
uncertainty).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..metrics import wilson_interval
from .sheet import KEY_FORMAT, RESPONSE_FORMAT, SIDES, VERSION

REJECTION_KINDS = ("malformed", "mismatched", "incomplete", "duplicate")
CSV_COLUMNS = ["format", "version", "study_id", "participant", "submitted_at", "set", "question", "answer"]
QUESTION_ORDER = ("quality", "attribute", "diversity", "overall")


class Rejected(ValueError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Response:
    path: Path
    participant: str
    study_id: str
    answers: dict[tuple[str, str], str]  # (set, question) -> "left" | "right"


@dataclass
class Rejection:
    path: str
    kind: str
    reason: str


@dataclass
class TallyResult:
    study_id: str
    methods: dict[str, str]  # "A" / "B" -> name
    accepted: list[Response]
    rejected: list[Rejection]
    rows: list[dict]  # one per (group, question)
    by_attribute: list[dict] = field(default_factory=list)

    @property
    def rejected_counts(self) -> dict[str, int]:
        c = Counter(r.kind for r in self.rejected)
        return {k: c.get(k, 0) for k in REJECTION_KINDS}

    def summary(self) -> str:
        n = len(self.accepted) + len(self.rejected)
        counts = ", ".join(f"{v} {k}" for k, v in self.rejected_counts.items() if v)
        line = f"{n} response file(s): {len(self.accepted)} accepted, {len(self.rejected)} rejected"
        return line + (f" ({counts})" if counts else "")

    def markdown(self, rows: list[dict] | None = None, by: str = "group") -> str:
        """Table 1's layout: one row per method, one column per (group, question)."""
        rows = self.rows if rows is None else rows
        head = [f"{r[by]}: {r['question']}" for r in rows]
        lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for m in ("A", "B"):
            name = self.methods[m]
            cells = [
                f"{r['percent'][name]:.2f}% [{100 * r['ci95'][name][0]:.1f}, {100 * r['ci95'][name][1]:.1f}]"
                if r["n_votes"]
                else "–"
                for r in rows
            ]
            lines.append(f"| {_md(name)} | " + " | ".join(cells) + " |")
        lines.append("| votes | " + " | ".join(str(r["n_votes"]) for r in rows) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {
            "study_id": self.study_id,
            "methods": self.methods,
            "n_files": len(self.accepted) + len(self.rejected),
            "accepted": [{"file": str(r.path), "participant": r.participant} for r in self.accepted],
            "rejected": [r.__dict__ for r in self.rejected],
            "rejected_counts": self.rejected_counts,
            "interval": "95% Wilson score interval over votes",
            "by_group": self.rows,
            "by_attribute": self.by_attribute,
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "tally.json", "csv": out / "tally.csv", "md": out / "tally.md"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["by", "group", "question", "method", "votes", "n_votes", "percent", "ci95_low", "ci95_high"])
            for by, rows in (("group", self.rows), ("attribute", self.by_attribute)):
                for r in rows:
                    for name in self.methods.values():
                        lo, hi = r["ci95"][name]
                        w.writerow([by, r[by], r["question"], name, r["votes"][name], r["n_votes"],
                                    r["percent"][name], 100 * lo, 100 * hi])  # fmt: skip
        md = [f"# User study {self.study_id}", "", self.summary(), "", "## By group (Table 1)", "", self.markdown()]
        md += ["## By attribute", "", self.markdown(self.by_attribute, by="attribute")]
        if self.rejected:
            md += ["## Rejected files", ""] + [f"- `{r.path}`: {r.kind}: {_md(r.reason)}" for r in self.rejected]
        paths["md"].write_text("\n".join(md) + "\n", encoding="utf-8")
        return paths


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- reading ---------------------------------------------------------------------------------------------------


def load_key(path: str | Path) -> dict:
    path = Path(path)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"answer key {path}: cannot read: {err}") from None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or key.get("version") != VERSION:
        raise ValueError(f"answer key {path}: not an asyrp study answer key ({KEY_FORMAT} v{VERSION})")
    return key


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise Rejected("malformed", f"duplicate JSON keys {sorted(dup)}")
    return dict(pairs)


def _parse_json(text: str) -> dict:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except Rejected:
        raise
    except ValueError as err:
        raise Rejected("malformed", f"not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise Rejected("malformed", "not a JSON object")
    answers = data.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        raise Rejected("malformed", "'answers' must be a list of {set, question, answer} objects")
    return data


def _parse_csv(text: str) -> dict:
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise Rejected("malformed", f"not valid CSV: {err}") from None
    if not rows:
        raise Rejected("malformed", "CSV has no answer rows")
    if list(rows[0].keys()) != CSV_COLUMNS:
        raise Rejected("malformed", f"CSV columns must be {','.join(CSV_COLUMNS)}, got {','.join(rows[0])}")
    if any(None in r or None in r.values() for r in rows):
        raise Rejected("malformed", "CSV rows have the wrong number of fields")
    head = {k: rows[0][k] for k in CSV_COLUMNS[:5]}
    for n, r in enumerate(rows, 2):
        if any(r[k] != v for k, v in head.items()):
            raise Rejected("malformed", f"CSV line {n}: format/version/study/participant differ from line 2")
    try:
        head["version"] = int(head["version"])
    except ValueError:
        raise Rejected("malformed", f"CSV version {head['version']!r} is not a number") from None
    return {**head, "answers": [{k: r[k] for k in ("set", "question", "answer")} for r in rows]}


def read_response(path: str | Path) -> Response:
    """Parse one exported response file (JSON or CSV). Raises :class:`Rejected` ('malformed')."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise Rejected("malformed", "not UTF-8 text") from None
    except OSError as err:
        raise Rejected("malformed", f"cannot read: {err.strerror or err}") from None
    stripped = text.lstrip()
    data = _parse_json(text) if stripped.startswith("{") or path.suffix.lower() == ".json" else _parse_csv(text)
    if data.get("format") != RESPONSE_FORMAT:
        raise Rejected("malformed", f"not an asyrp study response (format {data.get('format')!r})")
    if data.get("version") != VERSION:
        raise Rejected("malformed", f"unsupported response version {data.get('version')!r}")
    who, sid = data.get("participant"), data.get("study_id")
    if not isinstance(who, str) or not who.strip():
        raise Rejected("malformed", "no participant ID")
    if not isinstance(sid, str) or not sid:
        raise Rejected("malformed", "no study_id")
    answers: dict[tuple[str, str], str] = {}
    for a in data["answers"]:
        s, q, v = a.get("set"), a.get("question"), a.get("answer")
        if not all(isinstance(x, str) for x in (s, q, v)):
            raise Rejected("malformed", f"answer entry {a!r} needs string set, question and answer")
        if (s, q) in answers:
            raise Rejected("malformed", f"set {s} question {q} is answered twice")
        answers[(s, q)] = v
    return Response(path, who.strip(), sid, answers)


def check_response(resp: Response, key: dict) -> None:
    """Raise :class:`Rejected` ('mismatched' or 'incomplete') unless ``resp`` answers exactly the key's sheet."""
    if resp.study_id != key["study_id"]:
        raise Rejected("mismatched", f"study_id {resp.study_id!r} is not this study's ({key['study_id']!r})")
    expected = {(s["set"], q) for s in key["sets"] for q in s["questions"]}
    unknown = sorted(set(resp.answers) - expected)
    if unknown:
        raise Rejected("mismatched", f"{len(unknown)} answer(s) to sets/questions not in this study, e.g. {unknown[0]}")
    bad = sorted(k for k, v in resp.answers.items() if v not in SIDES)
    if bad:
        raise Rejected("mismatched", f"answers must be left or right; {bad[0]} is {resp.answers[bad[0]]!r}")
    missing = sorted(expected - set(resp.answers))
    if missing:
        raise Rejected("incomplete", f"{len(missing)} of {len(expected)} questions unanswered, e.g. {missing[0]}")


def expand(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders replaced by their *.json and *.csv files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in (".json", ".csv"))
        else:
            out.append(p)
    return out


# --- counting -------------------------------------------------------------------------------------------------


def _rows(accepted: list[Response], key: dict, by: str) -> list[dict]:
    methods = key["methods"]
    votes: dict[tuple[str, str], Counter] = defaultdict(Counter)
    order: list[tuple[str, str]] = []
    for s in key["sets"]:
        for q in sorted(s["questions"], key=QUESTION_ORDER.index):
            cell = (s[by], q)
            if cell not in votes:
                order.append(cell)
                votes[cell] = Counter()
            for r in accepted:
                votes[cell][methods[s[r.answers[(s["set"], q)]]]] += 1
    groups = list(dict.fromkeys([c[by] for c in key.get("conditions", [])] + [g for g, _ in order]))
    order.sort(key=lambda c: (groups.index(c[0]), QUESTION_ORDER.index(c[1])))
    rows = []
    for g, q in order:
        c, n = votes[(g, q)], sum(votes[(g, q)].values())
        rows.append(
            {
                by: g,
                "question": q,
                "n_votes": n,
                "votes": {m: c.get(m, 0) for m in methods.values()},
                "percent": {m: (100.0 * c.get(m, 0) / n if n else None) for m in methods.values()},
                "ci95": {m: wilson_interval(c.get(m, 0), n) for m in methods.values()},
            }
        )
    return rows


def tally(response_paths: list[str | Path], key_path: str | Path) -> TallyResult:
    """Read every response file, reject bad ones (with reasons), count the rest against the key."""
    key = load_key(key_path)
    accepted: list[Response] = []
    rejected: list[Rejection] = []
    seen_files: dict[Path, Path] = {}
    seen_people: dict[str, Response] = {}
    for path in expand(list(response_paths)):
        try:
            real = path.resolve()
            if real in seen_files:
                raise Rejected("duplicate", f"the same file was given twice (first as {seen_files[real]})")
            seen_files[real] = path
            resp = read_response(path)
            check_response(resp, key)
            who = resp.participant.casefold()
            if who in seen_people:
                raise Rejected(
                    "duplicate", f"participant {resp.participant!r} already counted from {seen_people[who].path}"
                )
            seen_people[who] = resp
            accepted.append(resp)
        except Rejected as err:
            rejected.append(Rejection(str(path), err.kind, str(err)))
    return TallyResult(
        key["study_id"],
        key["methods"],
        accepted,
        rejected,
        _rows(accepted, key, "group"),
        _rows(accepted, key, "attribute"),
    )
