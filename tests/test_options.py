"""The yaml documentation is the option schema: every documented key parses, has a range, and its defaults pass."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import REPO_ROOT

from recbole_cmi.config_yaml import SafeConfigLoader
from recbole_cmi.data.augmentation import AUGMENTATIONS, SHORT_VIEWS
from recbole_cmi.data.dataloader import TRAIN_SAMPLINGS
from recbole_cmi.data.protocol import PROTOCOLS
from recbole_cmi.data.sampler import NEG_SAMPLERS
from recbole_cmi.data.target_split import SPLITS
from recbole_cmi.model.cl4srec import HIDDEN_ACTS, CL4SRec
from recbole_cmi.model.cmi import CATEGORY_INITS, LOSS_TYPES, REC_LOSS_INPUTS
from recbole_cmi.options import Option, documented_options, parse_documentation
from recbole_cmi.retrieval import RETRIEVAL_OPTIONS

PROPERTIES = REPO_ROOT / "properties"
DEFAULT_FILES = [PROPERTIES / "overall.yaml", *sorted((PROPERTIES / "model").glob("*.yaml"))]
DEFAULT_FILES += sorted((PROPERTIES / "dataset").glob("*.yaml"))
ALL_FILES = DEFAULT_FILES + sorted((PROPERTIES / "tuned").rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(PROPERTIES)))
def test_every_key_is_documented_and_its_value_passes_its_own_documentation(path):
    values = yaml.load(path.read_text(encoding="utf-8"), Loader=SafeConfigLoader)  # as the config reads it
    options = documented_options([path])
    list_typed = {"metrics", "topk"}  # checked by config.py, which also accepts RecBole's one-value forms
    assert set(values) - list_typed <= set(options), f"{path}: keys without a '# (type)' comment"
    for key, (option,) in options.items():
        assert option.accepts(values[key]), f"{path}: {key}={values[key]!r} fails '{option.requirement()}'"


@pytest.mark.parametrize("path", DEFAULT_FILES, ids=lambda p: str(p.relative_to(PROPERTIES)))
def test_every_numeric_default_states_its_range(path):
    for key, (option,) in documented_options([path]).items():
        if option.kind in ("int", "real"):
            assert option.low is not None or option.high is not None, f"{path}: {key} has no 'Range:'"


@pytest.mark.parametrize(
    ("path", "key", "constant"),
    [
        ("model/CMI.yaml", "loss_type", LOSS_TYPES),
        ("model/CMI.yaml", "rec_loss_input", REC_LOSS_INPUTS),
        ("model/CMI.yaml", "category_init", CATEGORY_INITS),
        ("model/CMI.yaml", "neg_sampler", NEG_SAMPLERS),
        ("model/CMI.yaml", "cl_augmentation", AUGMENTATIONS),
        ("model/CMI.yaml", "cl_short_views", SHORT_VIEWS),
        ("model/CL4SRec.yaml", "cl_augmentation", AUGMENTATIONS),
        ("model/CL4SRec.yaml", "hidden_act", HIDDEN_ACTS),
        ("model/CL4SRec.yaml", "cl_similarity", CL4SRec.SIMILARITIES),
        ("model/CL4SRec.yaml", "loss_type", CL4SRec.LOSS_TYPES),
        ("overall.yaml", "eval_protocol", PROTOCOLS),
        ("overall.yaml", "train_sampling", TRAIN_SAMPLINGS),
        ("overall.yaml", "multi_target_split", SPLITS),
    ],
)
def test_documented_choices_are_the_ones_the_code_accepts(path, key, constant):
    (option,) = documented_options([PROPERTIES / path])[key]
    assert set(option.choices) == set(constant)


@pytest.mark.parametrize(
    ("type_text", "text", "expected"),
    [
        ("int", "x. Range: >= 1.", Option("int", low=1.0)),
        ("float", "x. Range: > 0.", Option("real", low=0.0, lower_open=True)),
        ("float", "x. Range: [0, 1).", Option("real", low=0.0, high=1.0, upper_open=True)),
        ("float", "x. Range: (0, 1).", Option("real", low=0.0, high=1.0, lower_open=True, upper_open=True)),
        ("float", "x. Range: [0, inf).", Option("real", low=0.0)),
        ("str", "x. Range in ['a', 'b'].", Option("choice", choices=("a", "b"))),
        ("bool", "x", Option("bool")),
        ("dict or None", "x", Option("dict", none_ok=True)),
        ("list of int", "x", None),
    ],
)
def test_a_comment_gives_the_option_it_spells(type_text, text, expected):
    assert parse_documentation(type_text, text) == expected


@pytest.mark.parametrize(
    ("option", "good", "bad"),
    [
        (Option("bool"), [True, False], ["False", "no", 0, 1, None]),
        (Option("int", low=1), [1, 7], [0, 2.5, True, "3", float("inf")]),
        (Option("real", low=0, lower_open=True), [1e-9, 3, 0.5], [0, -1, math.inf, math.nan, "abc", [64]]),
        (Option("real", low=0, high=1, upper_open=True), [0, 0.99], [1, -0.01]),
        (Option("choice", choices=("a", "b")), ["a"], ["c", None, 1]),
    ],
)
def test_an_option_accepts_exactly_its_values(option, good, bad):
    assert all(option.accepts(v) for v in good)
    assert not any(option.accepts(v) for v in bad)


def test_the_retrieval_keys_follow_their_documentation():
    documented = documented_options([PROPERTIES / "overall.yaml"])
    for key, option in RETRIEVAL_OPTIONS.items():
        assert documented[key] == [option], key
