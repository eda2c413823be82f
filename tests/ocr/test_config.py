"""Config files: _base_ merging, overrides on the merged result, and the checks of every key
(through the CLI: a bad value or an unknown key exits 2 naming the key)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ocr.builders import build_postprocess
from ocr.cli import eval_command, train_command
from ocr.config import (
    ConfigError,
    InvalidConfigError,
    check_config,
    config_digest,
    load_config,
    merge,
)
from ocr.config_schema import complete
from ocr.data.dataset import OCRDataset
from ocr.data.normalize import DeviceNormalizer
from ocr.data.targets import DBNetTargets
from ocr.data.transforms import TrainTransform, ValTransform
from ocr.losses import DBLoss
from ocr.metrics import DetectionMetric
from ocr.models import DBNet
from ocr.postprocess import DBPostProcess

# Run configs (other YAML under configs/, such as augmentation pipelines, are not).
SHIPPED = sorted(str(p) for d in ("configs", "configs/data") for p in Path(d).glob("*.yaml"))
DBNET = os.path.abspath("configs/dbnet.yaml")


def _write(path, text):
    path.write_text(text)
    return path


def test_merge_replaces_leaves_and_keeps_siblings():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert merge(base, {"a": {"y": [3]}, "c": 4}) == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # the base is not modified


def test_base_is_read_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "base.yaml", "model: {width: 64, k: 50}\ntrainer: {epochs: 10}\n")
    child = _write(tmp_path / "child.yaml", "_base_: sub/base.yaml\nmodel: {width: 16}\n")
    merged = {"model": {"width": 16, "k": 50}, "trainer": {"epochs": 10}}
    assert load_config(child) == check_config(merged)  # checked: completed with defaults


def test_overrides_apply_to_keys_from_the_base(tmp_path):
    _write(tmp_path / "base.yaml", "trainer: {epochs: 10}\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\nmodel: {width: 16}\n")
    assert load_config(child, ["trainer.epochs=3"])["trainer"]["epochs"] == 3


def test_base_chain_that_loops_is_refused(tmp_path):
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_file(tmp_path):
    child = _write(tmp_path / "child.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(child)


def test_shipped_dbnet_config_includes_the_data_config():
    cfg = load_config("configs/dbnet.yaml")
    data = load_config("configs/data/base.yaml")
    assert cfg["datasets"] == data["datasets"]
    assert cfg["model"]["k"] == 50 and cfg["postprocess"]["unclip_ratio"] == 1.5


def test_demo_config_changes_only_what_it_names():
    demo = load_config("configs/demo.yaml")
    full = load_config("configs/dbnet.yaml")
    assert demo["model"]["width"] == 16
    assert demo["model"]["k"] == full["model"]["k"]
    assert demo["loss"] == full["loss"]


@pytest.mark.parametrize("path", SHIPPED, ids=SHIPPED)
def test_shipped_configs_pass_the_checks(path):
    load_config(path)  # raises InvalidConfigError naming the key otherwise


def _usage_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: bad config") and "Traceback" not in result.output
    return result.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "datasets.train_dataset.max_side=abc",
            "datasets.train_dataset.max_side is 'abc'; expected an integer >= 1, or null (no cap)",
        ),
        (
            "datasets.train_dataset.preload_images=maybe",
            "datasets.train_dataset.preload_images is 'maybe'; expected true or false",
        ),
        (
            "datasets.train_dataset.max_side=-5",
            "datasets.train_dataset.max_side is -5; expected an integer >= 1",
        ),
        (
            "datasets.val_dataset.max_side=320",
            "datasets.val_dataset.max_side is 320, below the transform size 640",
        ),
        ("trainer.device=gpu", "trainer.device is 'gpu'; expected auto, cpu, cuda or cuda:N"),
    ],
    ids=["max_side-text", "preload-maybe", "max_side-negative", "max_side-below-size", "device"],
)
def test_ocr_train_exits_2_naming_a_bad_value(override, message):
    # Checked before any data is read: the default config's image folders need not exist.
    assert message in _usage_error(CliRunner().invoke(train_command, [override, "--quiet"]))


def test_ocr_eval_exits_2_naming_a_bad_value_of_the_saved_config(trained):
    _, _, out = trained
    args = ["-k", str(out / "last.pt"), "datasets.val_dataset.max_side=abc"]
    output = _usage_error(CliRunner().invoke(eval_command, args))
    assert f"the config in '{out / 'last.pt'}' with overrides" in output
    assert "datasets.val_dataset.max_side is 'abc'" in output


def test_typo_in_a_config_file_says_which_key_was_meant(tmp_path):
    config = _write(
        tmp_path / "typo.yaml",
        f"_base_: {DBNET}\ndatasets:\n  train_dataset: {{max_sid: 640}}\n",
    )
    output = _usage_error(CliRunner().invoke(train_command, ["-c", str(config)]))
    assert "datasets.train_dataset.max_sid is not a known key; did you mean 'max_side'?" in output


def test_every_problem_is_listed_one_per_line(tmp_path):
    config = _write(
        tmp_path / "bad.yaml", f"_base_: {DBNET}\ntrainr: {{epochs: 2}}\nmodel: {{widht: 16}}\n"
    )
    output = _usage_error(CliRunner().invoke(eval_command, ["-k", "x.pt", "-c", str(config)]))
    assert output.splitlines()[1:] == [
        "  model.widht is not a known key; did you mean 'width'?",
        "  trainr is not a known key; did you mean 'trainer'?",
    ]


def test_typo_in_an_override_says_which_key_was_meant():
    with pytest.raises(ConfigError, match=r"did you mean 'datasets.val_dataset.max_side'\?"):
        load_config("configs/dbnet.yaml", ["datasets.val_dataset.maxside=640"])


@pytest.mark.parametrize(
    ("override", "ok"),
    [
        ("trainer.seed=4294967295", True),
        ("trainer.seed=4294967296", False),
        ("datasets.train_dataset.transform.flip_prob=1", True),
        ("datasets.train_dataset.transform.flip_prob=1.01", False),
    ],
    ids=["seed-max", "seed-max+1", "flip-1", "flip-above-1"],
)
def test_range_boundaries(override, ok):
    if ok:
        load_config("configs/dbnet.yaml", [override])
    else:
        with pytest.raises(InvalidConfigError, match=override.partition("=")[0]):
            load_config("configs/dbnet.yaml", [override])


def test_number_that_yaml_reads_as_text_becomes_a_float():
    # YAML 1.1 wants 1.0e-3; 1e-3 is text to PyYAML.
    assert load_config("configs/dbnet.yaml", ["optimizer.lr=1e-3"])["optimizer"]["lr"] == 0.001


def _with_transform(transform) -> dict:
    cfg = load_config("configs/dbnet.yaml")
    cfg["datasets"]["train_dataset"]["transform"] = transform
    return cfg


def test_target_transform_is_checked_for_its_target_only():
    transform = {"_target_": "my_pkg.aug.Receipts", "size": "any", "ops": [{"p": 2}]}
    checked = check_config(_with_transform(transform))
    assert checked["datasets"]["train_dataset"]["transform"] == transform


@pytest.mark.parametrize("target", ["", 3, None], ids=["empty", "number", "null"])
def test_target_transform_needs_a_dotted_path(target):
    with pytest.raises(InvalidConfigError, match=r"transform\._target_ is .*expected a dotted"):
        check_config(_with_transform({"_target_": target}))


def test_builtin_transform_keys_are_checked():
    with pytest.raises(InvalidConfigError) as info:
        check_config(_with_transform({"name": "val", "size": 100, "flip_prob": 0.5}))
    assert [p.key for p in info.value.problems] == [
        "datasets.train_dataset.transform.size",
        "datasets.train_dataset.transform.flip_prob",
    ]


# The values the code used when a key was left out, before the schema held the defaults.
FORMER_FALLBACKS = {
    "trainer": {
        "epochs": 1,
        "device": "auto",
        "amp": False,
        "val_every": 1,
        "output_dir": "runs/dbnet",
        "resume": None,
        "seed": 0,
        "threads": None,
        "log_every_steps": 0,
        "checkpoint_every_steps": 0,
    },
    "dataloader": {
        "batch_size": 4,
        "num_workers": 0,
        "multiprocessing_context": None,
        "persistent_workers": False,
        "seed": 0,
    },
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9},
    "scheduler": {"name": "constant", "power": 0.9, "warmup_steps": 0},
    "metric": {"iou_threshold": 0.5},
}


@pytest.mark.parametrize("name", sorted(FORMER_FALLBACKS), ids=str)
def test_checked_config_holds_every_key_of_a_section_with_its_default(name):
    checked = check_config({"trainer": {}, "dataloader": {}, "optimizer": {}})
    assert checked[name] == FORMER_FALLBACKS[name]


def test_a_dataset_left_with_its_paths_only_gets_every_other_key():
    checked = check_config(
        {"datasets": {"val_dataset": {"image_path": "i", "annotation_path": "a"}}}
    )
    assert checked["datasets"] == {
        "val_dataset": {
            "image_path": "i",
            "annotation_path": "a",
            "image_cache": None,
            "preload_images": False,
            "cache_fallback": "error",
            "cache_stale": "error",
            "cache_readahead": True,
            "max_side": None,
            "resample": "bilinear",
            "transform": {"name": "val", "size": 640},
        }
    }


def test_a_dataset_without_its_paths_is_refused_naming_them():
    with pytest.raises(InvalidConfigError) as info:
        check_config({"datasets": {"val_dataset": {}}})
    assert [str(p) for p in info.value.problems] == [
        "datasets.val_dataset.image_path is missing; expected a folder of images (a non-empty "
        "string)",
        "datasets.val_dataset.annotation_path is missing; expected an annotation file (a "
        "non-empty string)",
    ]


def test_sections_a_run_needs_stay_out_when_left_out():
    # The run then names the missing section (builders.section) instead of guessing one.
    checked = check_config({})
    assert not {"datasets", "dataloader", "model", "optimizer", "trainer"} & set(checked)


@pytest.mark.parametrize("given", [{}, {"loss": None}], ids=["left-out", "null"])
def test_an_optional_section_left_out_or_null_gets_all_its_defaults(given):
    assert check_config(given)["loss"] == {
        "prob_weight": 1.0,
        "binary_weight": 1.0,
        "thresh_weight": 10.0,
        "ohem_ratio": 3.0,
        "eps": 1e-6,
        "empty_negatives": 1000,
    }


def test_output_dir_null_reads_as_its_default():
    assert check_config({"trainer": {"output_dir": None}})["trainer"]["output_dir"] == "runs/dbnet"


def test_an_unused_key_of_old_configs_is_accepted_and_not_added():
    assert check_config({"trainer": {"log_every": 5}})["trainer"]["log_every"] == 5
    assert "log_every" not in check_config({"trainer": {}})["trainer"]


def test_postprocess_shrink_ratio_left_out_follows_the_targets():
    cfg = load_config("configs/dbnet.yaml")
    cfg["targets"]["shrink_ratio"] = 0.5
    assert build_postprocess(check_config(cfg)).shrink_ratio == 0.5


def test_postprocess_shrink_ratio_given_is_kept():
    cfg = load_config("configs/dbnet.yaml")
    cfg["targets"]["shrink_ratio"] = 0.5
    cfg["postprocess"]["shrink_ratio"] = 0.3
    assert build_postprocess(check_config(cfg)).shrink_ratio == 0.3


def test_checking_a_checked_config_changes_nothing():
    checked = load_config("configs/demo.yaml")
    assert check_config(checked) == checked


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    ("path", "given", "cls", "skip"),
    [
        ("loss", {}, DBLoss, ()),
        ("targets", {}, DBNetTargets, ()),
        ("postprocess", {}, DBPostProcess, ("shrink_ratio",)),  # null: the targets' ratio
        ("metric", {}, DetectionMetric, ()),
        ("normalization", {}, DeviceNormalizer, ()),
        ("model", {}, DBNet, ("name",)),
        ("datasets.val_dataset", {}, OCRDataset, ("transform",)),
        ("datasets.val_dataset.transform", {"name": "val"}, ValTransform, ("name",)),
        ("datasets.val_dataset.transform", {"name": "train"}, TrainTransform, ("name",)),
    ],
    ids=[
        "loss",
        "targets",
        "postprocess",
        "metric",
        "normalization",
        "model",
        "dataset",
        "val-transform",
        "train-transform",
    ],  # fmt: skip
)
def test_schema_defaults_are_the_defaults_of_what_the_section_builds(path, given, cls, skip):
    # A config that leaves a key out builds what the class builds when left without it.
    schema = {k: _plain(v) for k, v in complete(given, path).items() if k not in skip}
    params = inspect.signature(cls).parameters
    assert schema == {k: _plain(params[k].default) for k in schema}


def test_override_sets_a_schema_key_the_file_leaves_out_but_not_an_unknown_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer: {epochs: 2}\n")
    cfg = load_config(path, ["trainer.log_every_steps=5", "trainer.checkpoint_every_steps=7"])
    assert (cfg["trainer"]["log_every_steps"], cfg["trainer"]["checkpoint_every_steps"]) == (5, 7)
    with pytest.raises(ConfigError, match="'trainer.log_every_stepz' is not in"):
        load_config(path, ["trainer.log_every_stepz=5"])
    with pytest.raises(ConfigError, match="'trainer.nested' is not in"):
        load_config(path, ["trainer.nested.deeper=5"])


def test_config_digest_ignores_key_order_and_changes_with_any_value():
    cfg = load_config("configs/dbnet.yaml")
    reordered = {key: cfg[key] for key in reversed(list(cfg))}
    changed = load_config("configs/dbnet.yaml", ["postprocess.thresh=0.31"])
    assert config_digest(reordered) == config_digest(cfg)
    assert config_digest(changed) != config_digest(cfg)
    assert config_digest(cfg).startswith("sha256:") and len(config_digest(cfg)) == 7 + 16
