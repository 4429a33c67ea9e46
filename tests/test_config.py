"""recbole_cmi.config.Config: layering, model lookup, defaults, data_path, value checks, unknown keys."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml
from recbole.model.sequential_recommender.gru4rec import GRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec

import recbole_cmi.config_yaml as config_yaml
from recbole_cmi import utils
from recbole_cmi.config import Config
from recbole_cmi.config_keys import known_config_keys
from recbole_cmi.errors import ConfigValueError, DatasetError, UnknownModelError
from recbole_cmi.paths import bundled_dataset_dir, properties_dir
from recbole_cmi.utils import get_model


@pytest.fixture
def make_config(tiny_config):
    def make(model="SASRec", dataset="tiny", config_file_list=None, read_argv=False, **overrides):
        return Config(model, dataset, config_file_list, tiny_config(**overrides), read_argv=read_argv)

    return make


def write_yaml(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --- layering ---------------------------------------------------------------------------------

LAYER_KEYS = [
    "stopping_step",
    "eval_step",
    "loss_decimal_place",
    "metric_decimal_place",
    "weight_decay",
    "eval_batch_size",
    "seed",
]


def test_layering_overall_model_dataset_file_dict_argv(make_config, tmp_path, monkeypatch):
    """Each layer sets one key fewer than the one below it, with its own value."""
    props = tmp_path / "props"
    write_yaml(props / "overall.yaml", dict.fromkeys(LAYER_KEYS, 101))
    write_yaml(props / "model" / "SASRec.yaml", dict.fromkeys(LAYER_KEYS[1:], 102))
    write_yaml(props / "dataset" / "tiny.yaml", dict.fromkeys(LAYER_KEYS[2:], 103))
    write_yaml(props / "tuned" / "tiny" / "SASRec.yaml", dict.fromkeys(LAYER_KEYS[3:], 104))
    write_yaml(props / "tuned" / "tiny" / "GRU4Rec.yaml", {"eval_step": 999})  # another model's: ignored
    write_yaml(props / "tuned" / "other" / "SASRec.yaml", {"eval_step": 999})  # another dataset's: ignored
    config_file = write_yaml(tmp_path / "run.yaml", dict.fromkeys(LAYER_KEYS[4:], 105))
    monkeypatch.setattr(config_yaml, "properties_dir", lambda: props)
    monkeypatch.setattr(sys, "argv", ["prog", "--seed=107"])
    layered = dict.fromkeys(LAYER_KEYS[5:], 106)

    config = make_config(config_file_list=[str(config_file)], read_argv=True, **layered)
    assert [config[k] for k in LAYER_KEYS] == [101, 102, 103, 104, 105, 106, 107]
    assert make_config(config_file_list=[str(config_file)], **layered)["seed"] == 106  # argv ignored


def test_our_overall_yaml_beats_recboles_and_user_values_beat_ours(make_config):
    ours = yaml.safe_load((properties_dir() / "overall.yaml").read_text(encoding="utf-8"))
    config = make_config()
    assert config["stopping_step"] == ours["stopping_step"] != 10  # RecBole's overall.yaml says 10
    assert config["valid_metric"] == ours["valid_metric"]
    assert make_config(stopping_step=3)["stopping_step"] == 3


def test_later_config_files_win(make_config, tmp_path):
    first = write_yaml(tmp_path / "a.yaml", {"stopping_step": 1, "eval_step": 1})
    second = write_yaml(tmp_path / "b.yaml", {"stopping_step": 2})
    config = make_config(config_file_list=[str(first), str(second)])
    assert (config["stopping_step"], config["eval_step"]) == (2, 1)


def test_read_argv_reads_key_value_pairs_only_when_asked(make_config, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--learning_rate=0.05", "--train_batch_size=32"])
    config = make_config(read_argv=True)
    assert (config["learning_rate"], config["train_batch_size"]) == (0.05, 32)
    config = make_config(read_argv=False)
    assert (config["learning_rate"], config["train_batch_size"]) == (0.001, 64)


def test_missing_or_malformed_config_file_is_a_config_error(make_config, tmp_path):
    with pytest.raises(ConfigValueError, match="config file not found: .*nope.yaml"):
        make_config(config_file_list=[str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigValueError, match="not valid yaml"):
        make_config(config_file_list=[str(bad)])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n", encoding="utf-8")
    with pytest.raises(ConfigValueError, match="key: value"):
        make_config(config_file_list=[str(scalar)])


# --- model lookup -----------------------------------------------------------------------------


def test_core_models_fall_back_to_recbole(make_config):
    assert get_model("SASRec") is SASRec
    assert get_model("GRU4Rec") is GRU4Rec
    assert get_model("gru4rec") is GRU4Rec  # RecBole itself is case-sensitive
    config = make_config(model="GRU4Rec")
    assert config.model_class is GRU4Rec and config["model"] == "GRU4Rec"


def test_plugin_models_are_looked_up_first(make_config, tmp_path, monkeypatch):
    (tmp_path / "fake_plugin_models.py").write_text(
        "from recbole.model.sequential_recommender.sasrec import SASRec as CoreSASRec\n\n"
        "class SASRec(CoreSASRec):\n    pass\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(utils.PLUGIN_MODELS, "SASRec", "fake_plugin_models")
    plugin_class = get_model("SASRec")
    assert plugin_class is not SASRec and plugin_class.__module__ == "fake_plugin_models"
    assert make_config(model="sasrec").model_class is plugin_class


@pytest.mark.parametrize("name", sorted(utils.PLUGIN_MODELS))
def test_shipped_plugin_models_resolve_to_the_plugin(name):
    module = utils.PLUGIN_MODELS[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not written yet")
    assert get_model(name).__module__ == module
    assert get_model(name.lower()) is get_model(name)


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("ComiRec", ["ComiRecSA", "ComiRecDR"]), ("SASRecc", ["SASRec"]), ("GRU4Recc", ["GRU4Rec"])],
)
def test_unknown_model_names_the_closest_models(name, suggested):
    with pytest.raises(UnknownModelError, match=f"unknown model '{name}'") as err:
        get_model(name)
    hint = str(err.value).split("Did you mean:")[1]
    for model in suggested:
        assert model in hint  # in the class's own spelling
    assert "\n" not in str(err.value)


def test_case_variants_resolve_and_nonsense_gets_no_suggestion(make_config):
    assert make_config(model="SASrec")["model"] == "SASRec"
    with pytest.raises(UnknownModelError) as err:
        get_model("NoSuchModel")
    assert "Did you mean" not in str(err.value)
    with pytest.raises(UnknownModelError, match="non-empty"):
        get_model("")


# --- train_neg_sample_args follows loss_type --------------------------------------------------


def test_ce_loss_turns_negative_sampling_off(make_config):
    config = make_config(loss_type="CE")
    assert config["train_neg_sample_args"]["distribution"] == "none"


def test_bpr_loss_gets_one_uniform_negative(make_config):
    args = make_config(loss_type="BPR")["train_neg_sample_args"]
    assert (args["distribution"], args["sample_num"]) == ("uniform", 1)


def test_user_given_negative_sampling_wins(make_config):
    given = {"distribution": "popularity", "sample_num": 3}
    args = make_config(loss_type="BPR", train_neg_sample_args=given)["train_neg_sample_args"]
    assert (args["distribution"], args["sample_num"]) == ("popularity", 3)
    with pytest.raises(ConfigValueError, match="must be None with loss_type CE"):
        make_config(loss_type="CE", train_neg_sample_args=given)
    with pytest.raises(ConfigValueError, match="loss_type BPR needs negatives"):
        make_config(loss_type="BPR", train_neg_sample_args=None)


# --- data_path --------------------------------------------------------------------------------


def test_dataset_folder_in_cwd_wins_over_the_bundled_one(tmp_path):
    (tmp_path / "dataset" / "micro_video").mkdir(parents=True)  # cwd is tmp_path (conftest)
    config = Config("SASRec", "micro_video", config_dict={"gpu_id": ""}, read_argv=False)
    assert config["data_path"] == str(tmp_path / "dataset" / "micro_video")


def test_bundled_micro_video_is_found_from_any_cwd():
    config = Config("SASRec", "micro_video", config_dict={"gpu_id": ""}, read_argv=False)
    assert config["data_path"] == str(bundled_dataset_dir() / "micro_video")
    assert config["MAX_ITEM_LIST_LENGTH"] == 50  # properties/dataset/micro_video.yaml applies


def test_generated_noisy_preset_gets_micro_video_settings(tmp_path):
    # `synthetic --preset micro_video_noisy --output dataset/micro_video_noisy` makes the same columns and catalogue:
    # its yaml must give the same settings, not RecBole's defaults (batch 2048, history items ranked).
    (tmp_path / "dataset" / "micro_video_noisy").mkdir(parents=True)  # cwd is tmp_path (conftest)
    noisy = Config("SASRec", "micro_video_noisy", config_dict={"gpu_id": ""}, read_argv=False)
    bundled = Config("SASRec", "micro_video", config_dict={"gpu_id": ""}, read_argv=False)
    keys = ["MAX_ITEM_LIST_LENGTH", "train_batch_size", "exclude_history_items", "load_col", "user_inter_num_interval"]
    assert [noisy[key] for key in keys] == [bundled[key] for key in keys]
    assert noisy["train_batch_size"] == 256 and noisy["exclude_history_items"] is True


def test_unknown_dataset_names_the_places_searched(tmp_path, monkeypatch):
    import recbole.data.dataset.dataset as recbole_dataset

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(recbole_dataset.Dataset, "_download", no_download)
    with pytest.raises(DatasetError) as err:
        Config("SASRec", "no_such_data", config_dict={"gpu_id": ""}, read_argv=False)
    message = str(err.value)
    assert str(tmp_path / "dataset" / "no_such_data") in message
    assert str(bundled_dataset_dir() / "no_such_data") in message
    assert "micro_video" in message and "nothing is downloaded" in message
    with pytest.raises(DatasetError, match=str(tmp_path / "elsewhere" / "no_such_data")):
        Config("SASRec", "no_such_data", config_dict={"gpu_id": "", "data_path": str(tmp_path / "elsewhere")})


def test_dataset_folder_without_atomic_files_fails_before_recbole_would_download(tmp_path, monkeypatch):
    import recbole.data.dataset.dataset as recbole_dataset

    from recbole_cmi.pipeline import create_dataset

    monkeypatch.setattr(recbole_dataset.Dataset, "_download", lambda *a, **k: pytest.fail("download attempted"))
    (tmp_path / "dataset" / "empty_data").mkdir(parents=True)
    config = Config("SASRec", "empty_data", config_dict={"gpu_id": "", "state": "ERROR"}, read_argv=False)
    with pytest.raises(DatasetError, match="atomic file not found: .*empty_data.inter"):
        create_dataset(config)


# --- value checks -----------------------------------------------------------------------------

BAD_VALUES = [
    ("exclude_history_items", "yes", "True or False"),
    ("epochs", -1, "integer >= 0"),
    ("epochs", "abc", "integer >= 0"),
    ("epochs", True, "integer >= 0"),
    ("train_batch_size", 0, "integer >= 1"),
    ("train_batch_size", 2.5, "integer >= 1"),
    ("eval_batch_size", 0, "integer >= 1"),
    ("learning_rate", 0, "number > 0"),
    ("learning_rate", -1e-3, "number > 0"),
    ("learning_rate", "fast", "number > 0"),
    ("learning_rate", float("nan"), "number > 0"),
    ("weight_decay", -0.1, "number >= 0"),
    ("stopping_step", -1, "integer >= 0"),
    ("MAX_ITEM_LIST_LENGTH", 1, "integer >= 2"),
    ("MAX_ITEM_LIST_LENGTH", 0, "integer >= 2"),
    ("topk", [0], "positive integer"),
    ("topk", "ten", "positive integer"),
    ("metrics", ["Foo"], "'Foo' unknown"),
    ("valid_metric", "NDCG@7", "one of recall@10"),
    ("valid_metric", "AUC", "cut-off in 'topk'"),
    ("train_neg_sample_args", 5, "None, or a dict"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), BAD_VALUES)
def test_bad_values_raise_a_config_error_naming_key_and_requirement(make_config, key, value, fragment):
    with pytest.raises(ConfigValueError) as err:
        make_config(**{key: value})
    message = str(err.value)
    assert f"{key}={value!r}" in message and fragment in message and "\n" not in message


def test_all_bad_values_are_reported_at_once(make_config):
    with pytest.raises(ConfigValueError) as err:
        make_config(epochs=-1, learning_rate=0)
    assert "epochs=-1" in str(err.value) and "learning_rate=0" in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"epochs": 0},
        {"MAX_ITEM_LIST_LENGTH": 2},
        {"learning_rate": 1e-5, "weight_decay": 0},
        {"valid_metric": "ndcg@10"},
        {"metrics": "Recall", "topk": 5, "valid_metric": "Recall@5"},
        {"stopping_step": 0, "eval_step": 0},
    ],
)
def test_boundary_values_are_accepted(make_config, overrides):
    config = make_config(**overrides)
    for key, value in overrides.items():
        if key not in ("metrics", "topk"):  # RecBole turns a single value into a list
            assert config[key] == value


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_key_warns_once_with_the_closest_key(make_config, capsys):
    config = make_config(lerning_rate=0.01)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: unknown config key 'lerning_rate' (did you mean 'learning_rate'?): "
        "neither RecBole nor recbole_cmi reads it"
    ]
    assert config["lerning_rate"] == 0.01  # kept, as RecBole keeps arbitrary keys
    assert config["learning_rate"] == 0.001
    assert len(config.config_warnings) == 1


def test_known_keys_do_not_warn(make_config, capsys):
    # conftest's settings plus keys of other models (GRU4Rec's embedding_size, CMI's yaml) and RecBole's code
    make_config(embedding_size=8, rm_dup_inter="first", worker=0)
    assert capsys.readouterr().err == ""
    keys = known_config_keys()
    assert {"learning_rate", "MAX_ITEM_LIST_LENGTH", "user_inter_num_interval", "hidden_size"} <= keys
    for path in (properties_dir() / "model").glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) <= keys, path.name


def test_unknown_key_without_close_match_still_warns(make_config, capsys):
    make_config(zzz_qqq=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'zzz_qqq'" in err[0] and "did you mean" not in err[0]


def test_progress_bars_follow_the_terminal_unless_given(monkeypatch, tiny_data_root):
    base = {"gpu_id": "", "data_path": str(tiny_data_root)}
    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        assert Config("SASRec", "tiny", config_dict=base, read_argv=False)["show_progress"] is tty
        given = Config("SASRec", "tiny", config_dict={**base, "show_progress": not tty}, read_argv=False)
        assert given["show_progress"] is (not tty)
