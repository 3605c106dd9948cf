import pytest

from wilss.config import Config, flatten, override, parse_assignments
from wilss.errors import ConfigError
from wilss.presets import preset


def test_flat_names_round_trip():
    cfg = override(preset("synthetic"), {"train.lr": "0.5", "data.overlap": "false", "train.epochs": 3})
    flat = flatten(cfg)
    assert flat["train.lr"] == 0.5 and flat["data.overlap"] is False and flat["train.epochs"] == 3
    assert set(flat) == set(flatten(Config()))


@pytest.mark.parametrize("updates, words", [
    ({"train.lrr": "1"}, ["unknown config key 'train.lrr'", "train.lr"]),
    ({"train.epochs": "two"}, ["train.epochs", "integer"]),
    ({"train.epochs": "2.5"}, ["train.epochs", "integer"]),
    ({"train.epochs": "0"}, ["train.epochs", ">= 1"]),
    ({"data.overlap": "maybe"}, ["data.overlap", "boolean"]),
    ({"data.void_policy": "zero"}, ["data.void_policy", "bg, negative, ignore"]),
    ({"data.task": "15-6"}, ["unknown task '15-6'", "wilss tasks"]),
    ({"data.dataset": "cityscapes"}, ["data.dataset", "voc"]),
    ({"method": "magic"}, ["unknown method 'magic'", "finetune"]),
    ({"train": "1"}, ["section"]),
    ({"data.scale_min": "3"}, ["data.scale_min"]),
    ({"method": "fmwiss", "train.epochs_next": "1"}, ["fmwiss.warmup_epochs (1)", "train.epochs_next (1)"]),
    ({"method": "wilson", "wilson.pseudo_epoch": "8"}, ["wilson.pseudo_epoch (8)", "train.epochs_next (8)"]),
])
def test_strict_overrides_name_the_key(updates, words):
    with pytest.raises(ConfigError) as e:
        override(preset("synthetic"), updates)
    for w in words:
        assert w in str(e.value)


def test_parse_assignments():
    assert parse_assignments(["a.b=1", "c = x"]) == {"a.b": "1", "c": "x"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["train.lr"])


def test_presets_are_valid():
    from wilss.presets import PRESETS

    for name in PRESETS:
        override(preset(name), {})
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
