"""params.yaml: the shipped file loads, the paper's tables are transcribed, every error names its key."""

import copy
import io
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from pipeline import params as P
from pipeline import use_profile
from pipeline.blocks import ClipSpec

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    """The shipped params switched to the plumbing profile `offline` (what most checks below edit)."""
    data = P.parse_yaml(PARAMS.read_text())
    data["profile"], data["attributes"] = "offline", ["red", "blue"]
    return data


@pytest.fixture(scope="module")
def params(raw) -> P.Params:
    return P.params_from_dict(copy.deepcopy(raw))


def problems(raw: dict, change) -> str:
    """Apply ``change`` to a copy of the shipped params; return the ParamsError message."""
    data = copy.deepcopy(raw)
    change(data)
    with pytest.raises(P.ParamsError) as info:
        P.params_from_dict(data, "params.yaml")
    return str(info.value)


# --- the shipped file ----------------------------------------------------------------------------


def test_shipped_default_is_the_toy_world():
    shipped = P.load_params(PARAMS)
    assert shipped.profile == "toy" and shipped.attributes == ["red", "circle", "large"]
    assert shipped.active_profile.model.id == "offline:toy" and shipped.active_profile.clip.name == "offline:toy-clip"
    assert shipped.inversion.t_0 is None and shipped.active_inversion.t_0 == 500  # paper: full depth
    assert shipped.schedule.t_edit_default is None and shipped.active_schedule.t_edit_default == 300
    assert "profile toy" in shipped.summary()


def test_t_0_needs_a_uniform_grid(raw):
    message = problems(raw, lambda d: d["inversion"].update(t_0=500, spacing="leading"))
    assert "inversion: " in message and "t_0 needs spacing uniform or linspace" in message


def test_plumbing_params_load(params):
    assert params.profile == "offline" and params.attributes == ["red", "blue"]
    assert params.active_profile.model.id == "offline:small"
    assert list(params.active_attributes) == ["red", "blue"]
    assert params.attribute("red").target == "a red shape"
    assert params.active_coefficients == {"red": 1.0, "blue": 1.0}
    assert "profile offline" in params.summary()


def test_an_attribute_rows_coefficient_wins_over_edit_coefficients(raw):
    data = copy.deepcopy(raw)
    data["catalog"]["offline"]["blue"]["coefficient"] = 0.5
    data["edit"]["coefficients"] = [2.0]
    assert P.params_from_dict(data).active_coefficients == {"red": 2.0, "blue": 0.5}
    data["edit"]["coefficients"] = [2.0, 3.0]  # one per attribute: the row still wins for its own
    assert P.params_from_dict(data).active_coefficients == {"red": 2.0, "blue": 0.5}
    toy = P.params_from_dict(P.parse_yaml(PARAMS.read_text()))
    assert toy.profile == "toy" and toy.active_coefficients == {"red": 1.0, "circle": 0.75, "large": 3.0}


def test_shipped_params_are_stable_under_dvc_redump():
    """`dvc exp run -S` re-dumps params.yaml with ruamel defaults: nothing else may change."""
    text = PARAMS.read_text()
    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(yaml.load(text), out)
    assert out.getvalue() == text


def test_every_profile_validates_as_active(raw):
    """Each supported profile, made active with its whole catalog, is valid params."""
    for name, profile in raw["profiles"].items():
        data = copy.deepcopy(raw)
        data["profile"], data["attributes"] = name, list(raw["catalog"][profile["catalog"]])
        if profile.get("supported", True):
            P.params_from_dict(data)
        else:
            with pytest.raises(P.ParamsError, match="not supported"):
                P.params_from_dict(data)


# --- Tables 2 and 3 ------------------------------------------------------------------------------

CATALOG_KEYS = {
    "celeba_hq": "young smiling sad angry tanned disgusted makeup zombie bald curly_hair neanderthal "
    "zuckerberg nicolas_cage pixar modigliani frida_kahlo",
    "lsun_church": "gothic temple department_store wooden_house asian_tower red_brick factory",
    "lsun_bedroom": "princess hotel",
    "afhq_dog": "happy sleepy angry wolf yorkshire",
    "metfaces": "sad smiling disgusted",
    "toy": "red circle large",
    "offline": "red blue",
}

# dataset, attribute, source, target, lambda_clip, from_noise, clip similarity, t_edit, t_boost
ROWS = [
    ("celeba_hq", "young", "person", "young person", 0.8, False, 0.905, 515, 167),
    ("celeba_hq", "smiling", "face", "smiling face", 0.8, False, 0.899, 513, 167),
    ("celeba_hq", "curly_hair", "person", "person with curly hair", 0.8, False, 0.835, 499, 167),
    ("celeba_hq", "zombie", "human", "zombie", 0.6, True, 0.868, 506, 167),
    ("celeba_hq", "neanderthal", "human", "neanderthal", 1.2, True, 0.802, 490, 167),
    ("celeba_hq", "nicolas_cage", "person", "nicolas cage", 0.8, True, 0.710, 461, 167),
    ("celeba_hq", "modigliani", "photo", "painting in modigliani style", 0.8, True, 0.565, 403, 167),
    ("celeba_hq", "frida_kahlo", "photo", "self-portrait by frida kahlo", 0.5, True, 0.443, 321, 167),
    ("lsun_church", "gothic", "church", "gothic church", 0.8, True, 0.912, 371, 293),
    ("lsun_church", "asian_tower", "church", "ancient traditional asian tower", 0.8, True, 0.784, 330, 293),
    ("lsun_church", "factory", "church", "factory", 0.8, True, 0.702, 301, 293),
    ("lsun_bedroom", "princess", "bedroom", "princess bedroom", 1.5, True, 0.912, 370, 221),
    ("lsun_bedroom", "hotel", "bedroom", "hotel bedroom", 1.5, True, 0.917, 371, 221),
    ("afhq_dog", "happy", "dog", "happy dog", 1.5, True, 0.883, 430, 167),
    ("afhq_dog", "wolf", "dog", "wolf", 1.7, True, 0.850, 412, 167),
    ("afhq_dog", "yorkshire", "dog", "yorkshire terrier", 2.0, True, 0.690, 302, 167),
    ("metfaces", "sad", "painting of a person", "painting of a sad person", 1.5, False, 0.921, 330, 180),
    (
        "metfaces",
        "disgusted",
        "painting of a person",
        "painting of a disgusted person",
        1.5,
        False,
        0.879,
        291,
        180,
    ),
]


def test_catalog_holds_every_row_of_tables_2_and_3(params):
    assert {k: set(v) for k, v in params.catalog.items()} == {k: set(v.split()) for k, v in CATALOG_KEYS.items()}


@pytest.mark.parametrize("dataset,name,src,tgt,lam,noise,sim,t_edit,t_boost", ROWS)
def test_table_rows(params, dataset, name, src, tgt, lam, noise, sim, t_edit, t_boost):
    row = params.catalog[dataset][name]
    assert (row.source, row.target, row.lambda_clip, row.from_noise) == (src, tgt, lam, noise)
    assert (row.paper.clip_similarity, row.paper.t_edit, row.paper.t_boost) == (sim, t_edit, t_boost)
    assert row.lambda_recon == "auto"
    assert row.lambda_recon_for(sim) == pytest.approx(3 * sim)  # Table 3: <similarity>*3


def test_rows_missing_from_table_3(params):
    """bald, zuckerberg (CelebA-HQ) and angry (AFHQ-dog) are only in Table 2."""
    celeba, dog = params.catalog["celeba_hq"], params.catalog["afhq_dog"]
    assert (celeba["bald"].lambda_clip, celeba["bald"].from_noise) == (0.8, False)
    assert (celeba["zuckerberg"].lambda_clip, celeba["zuckerberg"].from_noise) == (0.8, True)
    assert (dog["angry"].paper.t_edit, dog["angry"].from_noise) == (419, True)


def test_t_edit_falls_with_clip_similarity(params):
    """Table 2's t_edit comes from one formula per dataset: a typo would break the ordering."""
    for name, rows in params.catalog.items():
        paper = sorted((r.paper.clip_similarity, r.paper.t_edit) for r in rows.values() if r.paper)
        assert [t for _, t in paper] == sorted(t for _, t in paper), name
        assert len({r.paper.t_boost for r in rows.values() if r.paper}) <= 1, name


def test_prompts_are_lower_case(params):
    for rows in params.catalog.values():
        for row in rows.values():
            assert row.source == row.source.lower() and row.target == row.target.lower()


# --- errors name their key -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,expected",
    [
        (
            lambda d: d["train"].update(optimzer="sgd"),
            "train.optimzer: unknown key (did you mean 'optimizer'?)",
        ),
        (
            lambda d: d["train"].update(optimizer="sdg"),
            "train.optimizer: must be one of sgd, adam, got 'sdg'",
        ),
        (lambda d: d["train"].update(lr=-1), "train.lr: must be > 0, got -1"),
        (
            lambda d: d["train"].update(step_per="epoch"),
            "train.step_per: must be one of timestep, trajectory",
        ),
        (lambda d: d["inversion"].update(n_inv_steps=1), "inversion.n_inv_steps: must be >= 2, got 1"),
        (lambda d: d["inversion"].update(spacing="cosine"), "inversion.spacing: must be one of uniform"),
        (lambda d: d["edit"].update(n_gen_steps=0), "edit.n_gen_steps: must be >= 2, got 0"),
        (
            lambda d: d["schedule"].update(lpips_edit_threshold=0),
            "schedule.lpips_edit_threshold: must be > 0",
        ),
        (lambda d: d.update(attributes=["red", "smilng"]), "attributes[1]: unknown attribute 'smilng'"),
        (
            lambda d: d.update(profile="celeba"),
            "profile: unknown profile 'celeba' (did you mean 'celeba_hq'?)",
        ),
        (
            lambda d: d["catalog"]["offline"]["red"].update(target=" "),
            "catalog.offline.red.target: must not be empty",
        ),
        (
            lambda d: d["profiles"]["offline"].update(device="gpu"),
            "profiles.offline.device: must be auto, cpu",
        ),
        (lambda d: d["profiles"]["offline"].update(dtype="fp16"), "profiles.offline.dtype: must be one of"),
        (
            lambda d: d["profiles"]["offline"].update(catalog="nope"),
            "profiles.offline.catalog: unknown catalog",
        ),
        (
            lambda d: d["catalog"]["offline"]["red"].update(lambda_recon="x"),
            "red.lambda_recon: must be 'auto' or",
        ),
        (lambda d: d.pop("edit"), "edit: required key is missing"),
        (lambda d: d["edit"].update(coefficients=[1, 2, 3]), "edit.coefficients: 3 values for 2 attributes"),
        (
            lambda d: d["schedule"]["overrides"].update(red={"t_edit": 300, "t_boost": 300}),
            "schedule.overrides.red: t_boost (300) must be < t_edit (300)",
        ),
        (
            lambda d: d["schedule"]["overrides"].update(red={"t_edit": 1000}),
            "schedule.overrides.red.t_edit: must be <= 999, got 1000",
        ),
        (  # both in params: refused at load, not 15 s into train@red
            lambda d: d["schedule"].update(t_edit_default=200, overrides={"red": {"t_boost": 250}}),
            "schedule.t_edit_default: 200 must be above schedule.overrides.red.t_boost=250 (need t_boost < t_edit)",
        ),
        (
            lambda d: d["schedule"]["overrides"].update(purple={"t_edit": 500}),
            "schedule.overrides.purple: unknown attribute",
        ),
        (
            lambda d: d["custom_attributes"].update({"Big Eyes": {"source": "a", "target": "b", "lambda_clip": 1}}),
            "custom_attributes.Big Eyes: invalid name 'Big Eyes'",
        ),
        (
            lambda d: d["profiles"]["offline"]["overrides"]["train"].update(lrr=0.1),
            "profiles.offline.overrides.train.lrr: unknown key (did you mean 'lr'?)",
        ),
        (
            lambda d: d["profiles"]["offline"]["overrides"]["edit"].update(n_gen_steps=1),
            "profiles.offline.overrides.edit.n_gen_steps: must be >= 2, got 1",
        ),
    ],
)
def test_errors_name_the_key(raw, change, expected):
    message = problems(raw, change)
    assert expected in message
    assert "pydantic" not in message and "Traceback" not in message


def test_unknown_attribute_lists_the_valid_ones(raw):
    message = problems(raw, lambda d: d.update(attributes=["green"]))
    assert "attributes[0]: unknown attribute 'green'" in message and "valid: red, blue" in message


def test_unsupported_profile_gives_the_reason(raw):
    def change(d):
        d["profiles"]["afhq_dog"].update(supported=False, unsupported_reason="iDDPM weights are missing here")
        d["profile"], d["attributes"] = "afhq_dog", ["happy"]

    message = problems(raw, change)
    assert "profile: 'afhq_dog' is not supported: iDDPM weights are missing here" in message


def test_every_problem_is_listed(raw):
    def change(d):
        d["train"].update(lr=-1, optimizer="sdg")
        d["inversion"]["n_inv_steps"] = 1

    message = problems(raw, change)
    assert message.startswith("params.yaml: 3 problems:")
    assert all(k in message for k in ("train.lr:", "train.optimizer:", "inversion.n_inv_steps:"))


def test_yaml_and_file_errors(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: offline\nprofile: offline\n")
    with pytest.raises(P.ParamsError, match="duplicate key"):
        P.load_params(bad)
    with pytest.raises(P.ParamsError, match="cannot read"):
        P.load_params(tmp_path / "missing.yaml")


def test_cli_exit_codes(tmp_path, capsys, raw):
    assert P.main(["--path", str(PARAMS)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "params.yaml"
    bad.write_text(PARAMS.read_text().replace("  lr: 0.5", "  lr: -1"))
    assert P.main(["--path", str(bad)]) == 2
    assert "train.lr: must be > 0, got -1" in capsys.readouterr().err


# --- profile overrides and custom attributes -----------------------------------------------------


def test_profile_overrides_merge(params):
    assert params.inversion.n_train_images == 1000 and params.active_inversion.n_train_images == 16
    assert params.active_inversion.spacing == params.inversion.spacing  # not overridden: inherited
    assert params.active_evaluate.clip == ClipSpec(name="offline:tiny", pretrained=None)
    celeba = params.blocks("celeba_hq")
    assert celeba.inversion.n_train_images == 1000 and celeba.evaluate.clip.name == "ViT-B-32"


def test_nested_override_is_deep_merged(raw):
    data = copy.deepcopy(raw)
    data["profiles"]["offline"]["overrides"]["evaluate"] = {"clip": {"pretrained": "laion2b"}}
    params = P.params_from_dict(data)
    assert params.active_evaluate.clip == ClipSpec(name="ViT-B-32", pretrained="laion2b")
    assert params.active_evaluate.n_images == 100


def test_custom_attributes_take_precedence(raw):
    data = copy.deepcopy(raw)
    data["custom_attributes"] = {
        "red": {"source": "a shape", "target": "a crimson shape", "lambda_clip": 2},
        "round": {"source": "a shape", "target": "a round shape", "lambda_clip": 1, "lambda_recon": 0.5},
    }
    data["attributes"] = ["red", "round"]
    params = P.params_from_dict(data)
    assert params.attribute("red").target == "a crimson shape"
    assert params.attribute("round").lambda_recon_for(0.9) == 0.5
    with pytest.raises(P.ParamsError, match="unknown attribute 'blu'"):
        params.attribute("blu")


# --- use_profile ---------------------------------------------------------------------------------


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_use_profile_round_trip_keeps_comments(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    original = PARAMS.read_text()
    path.write_text(original)

    assert use_profile.main(["celeba_hq", "--path", str(path)]) == 0
    switched = path.read_text()
    params = P.load_params(path)
    assert params.profile == "celeba_hq"
    assert params.attributes == CATALOG_KEYS["celeba_hq"].split()
    assert comments(switched) == comments(original)
    assert max(len(line) for line in switched.splitlines()[:20]) <= 80  # long list wrapped tidily
    assert "next: dvc repro" in capsys.readouterr().out

    assert use_profile.main(["lsun_church", "--attributes", "gothic,factory", "--path", str(path)]) == 0
    assert P.load_params(path).attributes == ["gothic", "factory"]
    assert use_profile.main(["toy", "--path", str(path)]) == 0
    assert path.read_text() == original  # byte for byte


def test_use_profile_refuses_invalid_results(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text())
    assert use_profile.main(["offline", "--attributes", "red,green", "--path", str(path)]) == 2
    assert use_profile.main(["nope", "--path", str(path)]) == 2
    err = capsys.readouterr().err
    assert "attributes[1]: unknown attribute 'green'" in err
    assert "unknown profile 'nope'" in err
    assert path.read_text() == PARAMS.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # no temporary files left


def test_use_profile_all_adds_custom_attributes(tmp_path):
    path = tmp_path / "params.yaml"
    text = PARAMS.read_text()
    custom = "custom_attributes:\n  round:\n    source: a shape\n    target: a round shape\n    lambda_clip: 1.0\n"
    path.write_text(re.sub(r"^custom_attributes: \{\}\n", custom, text, flags=re.M))
    assert use_profile.main(["celeba_hq", "--all", "--path", str(path)]) == 0
    assert P.load_params(path).attributes[-1] == "round"
    assert use_profile.main(["offline", "--path", str(path)]) == 0
    assert P.load_params(path).attributes == ["red", "blue"]


def test_source_per_image(raw):
    message = problems(
        raw, lambda d: d["catalog"]["offline"]["red"].update(source_per_image="a {colour} shape", from_noise=True)
    )
    assert "catalog.offline.red: " in message and "source_per_image needs inverted images" in message
    from pipeline.stages.train import per_image_prompts

    rows = {
        "1": {"id": "1", "colour": "green", "shape": "circle"},
        "2": {"id": "2", "colour": "blue", "shape": "square"},
    }
    assert per_image_prompts("a {colour} {shape}", rows, ["2", "1"]) == ["a blue square", "a green circle"]
    with pytest.raises(ValueError, match=r"cannot be filled.*'hair'.*columns: \['colour', 'id', 'shape'\]"):
        per_image_prompts("a {hair} person", rows, ["1"])


def test_t_edit_default_and_the_t_0_check(raw, monkeypatch):
    """schedule.t_edit_default pins t_edit for every attribute without an override; a t_edit above
    inversion.t_0 (an empty editing interval) is refused with the fix in the message."""
    from types import SimpleNamespace

    import numpy as np

    from asyrp.core.schedule import LpipsCurves
    from pipeline.stages import train as T

    curves = LpipsCurves(np.array([0, 500, 999]), np.array([0.0, 0.01, 0.1]), np.array([0.0, 0.05, 0.2]), 4, False)
    monkeypatch.setattr(T, "load_curves", lambda out: curves)
    clip = SimpleNamespace(prompt_similarity=lambda a, b: 0.5)
    data = copy.deepcopy(raw)
    data["profile"], data["attributes"] = "toy", ["red", "circle", "large"]
    s = T.attribute_schedule(P.params_from_dict(data), "circle", clip, Path("unused"))
    assert s["t_edit"] == 300 and s["t_0"] == 500 and s["chosen_by"] == "override"
    data["profiles"]["toy"]["overrides"]["schedule"]["t_edit_default"] = None  # the rule: t_edit ~ 833 > t_0
    with pytest.raises(ValueError, match=r"circle: t_edit=8\d\d \(lpips\) is above inversion.t_0=500"):
        T.attribute_schedule(P.params_from_dict(data), "circle", clip, Path("unused"))
