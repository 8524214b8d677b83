"""NestConfig defaults, the paper's settings, and the calibrated config shipped for the embedded model."""

import json

import pytest

from nest_integrations import NestConfig, default_config
from nest_integrations.config import calibration_file
from nest_integrations.lm import EMBEDDED_MODEL_NAME


def test_paper_settings_switch_the_guards_off_and_keep_the_official_values() -> None:
    paper = NestConfig.paper()
    assert (paper.min_passage_relevance, paper.passage_prior, paper.context_guard) == (0.0, 0.0, False)
    assert (paper.alpha, paper.tau, paper.beta, paper.gamma, paper.num_neighbors) == (0.3, 0.1, 0.5, 5e-4, 1024)
    assert paper.lm_temperature == 0.7 and paper.span_window == 64 and paper.num_passages == 20
    ours = NestConfig()
    assert ours.context_guard and ours.min_passage_relevance > 0
    assert NestConfig.paper(alpha=0.2).alpha == 0.2


def test_the_embedded_model_ships_a_calibrated_config_that_loads() -> None:
    path = calibration_file(EMBEDDED_MODEL_NAME)
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["calibration"]["model"] == EMBEDDED_MODEL_NAME
    assert default_config(EMBEDDED_MODEL_NAME) == NestConfig.model_validate(record["config"])
    # Attribution above the floor it was fitted with, on the held-in prompts.
    assert record["calibration"]["chosen"]["attribution_ratio"] >= 0.5


def test_models_without_calibration_get_the_defaults(tmp_path) -> None:
    assert default_config("someone/unknown-model") == NestConfig()
    plain = tmp_path / "plain.json"
    NestConfig(alpha=0.25).to_file(plain)
    assert NestConfig.from_file(plain).alpha == 0.25


def test_a_single_stop_string_is_a_list_of_one() -> None:
    assert NestConfig(stop="\n").stop == ["\n"]
    assert NestConfig(stop=["\n", "END"]).stop == ["\n", "END"]
    assert NestConfig(stop=("END",)).stop == ["END"]
    assert NestConfig.model_validate({"stop": "END"}).stop == ["END"]


def test_a_per_call_stop_string_is_accepted_and_non_strings_are_config_errors() -> None:
    from nest_integrations import ConfigError, NestEngine

    engine = NestEngine.__new__(NestEngine)  # call_config needs the config alone, not a model
    engine.config = NestConfig(stop=["END"])
    assert engine.call_config(stop="\n").stop == ["\n"]
    assert engine.call_config(stop=["\n", "\n\n"]).stop == ["\n", "\n\n"]
    for bad in ([1], ["ok", None], [b"\n"], "", [""]):
        with pytest.raises(ConfigError, match="stop"):
            engine.call_config(stop=bad)


def test_per_call_overrides_fail_with_one_line_naming_the_option() -> None:
    from nest_integrations import ConfigError
    from nest_integrations.config import with_overrides

    config = NestConfig()
    cases = [
        ({"max_new_tokens": -1}, "max_new_tokens: Input should be greater than or equal to 1 (got -1)"),
        ({"temperature": float("nan")}, "temperature: Input should be a finite number (got nan)"),
        ({"max_new_tokens": True}, "max_new_tokens: expected an integer, got bool True"),
        ({"max_new_tokens": "8"}, "max_new_tokens: expected an integer, got str '8'"),
        ({"seed": 2.0}, "seed: expected an integer, got float 2.0"),
        ({"stop": [""]}, "stop: stop strings must be non-empty (got [''])"),
        ({"stop": [1]}, "stop: stop takes a string or a list of strings, got [1]"),
        ({"stop": {"x"}}, "stop: stop takes a string or a list of strings, got {'x'}"),
        ({"temperature": "0.5"}, "temperature: expected a number, got str '0.5'"),
        ({"temperature": True}, "temperature: expected a number, got bool True"),
        ({"do_sample": "yes"}, "do_sample: expected true or false, got str 'yes'"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as caught:
            with_overrides(config, overrides)
        assert str(caught.value) == message and "\n" not in str(caught.value)
        assert caught.value.option == next(iter(overrides))
    assert with_overrides(config, {"max_new_tokens": 8, "seed": None, "temperature": 1}).temperature == 1.0


def test_an_invalid_config_raises_config_error_naming_the_field() -> None:
    from nest_integrations import ConfigError

    for kwargs, field in [({"alpha": -1}, "alpha"), ({"bogus": 1}, "bogus"), ({"stop": ""}, "stop")]:
        with pytest.raises(ConfigError, match=f"^{field}: ") as caught:
            NestConfig(**kwargs)
        assert caught.value.option == field and isinstance(caught.value, ValueError)
    config = NestConfig()
    with pytest.raises(ConfigError, match=r"^alpha: "):
        config.alpha = 5  # assignments are validated too
    assert config.alpha != 5
