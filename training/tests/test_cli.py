"""The training CLI's flags built from the configuration dataclasses: booleans and
choices are checked when the command line is parsed."""

from __future__ import annotations

import dataclasses

import pytest

from latent_memory_training.cli import build_parser
from latent_memory_training.training.config import TrainConfig, WorldConfig


def fit_args(*flags: str):
    return build_parser().parse_args(["fit", "--data", "d", "--out", "o", *flags])


@pytest.mark.parametrize(
    ("word", "value"), [("true", True), ("Yes", True), ("1", True), ("false", False), ("0", False)]
)
def test_boolean_flags_read_true_and_false(word: str, value: bool) -> None:
    assert fit_args("--amp", word).amp is value


def test_a_boolean_typo_is_refused_not_read_as_false(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        fit_args("--amp", "ture")
    assert "expected true or false, got 'ture'" in capsys.readouterr().err


def test_a_value_outside_the_choices_is_refused(capsys: pytest.CaptureFixture) -> None:
    assert fit_args("--distill-schedule", "anneal").distill_schedule == "anneal"
    with pytest.raises(SystemExit):
        fit_args("--distill-schedule", "annealed")
    assert "invalid choice: 'annealed'" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "why"), [("0", "expected 1 or more, got 0"), ("x", "whole")])
def test_a_count_below_one_is_refused_at_parse_time(
    value: str, why: str, capsys: pytest.CaptureFixture
) -> None:
    heldout = ["heldout", "--model", "m", "--data", "d", "--out", "o.json"]
    assert build_parser().parse_args([*heldout, "--query-every", "5"]).query_every == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args([*heldout, "--query-every", value])  # once divided by zero
    assert why in capsys.readouterr().err


def test_every_configuration_flag_has_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls in (TrainConfig, WorldConfig):
        for f in dataclasses.fields(cls):
            assert f"{cls.__name__}.{f.name} (default:" in text, f.name
