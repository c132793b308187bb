"""Property-based tests of the config parser (Hypothesis): generated keys, values, types and orders.

Properties: any override text or YAML mapping gives a valid config or a ConfigError with a message,
never another exception; valid configs round-trip through their YAML form and their saved dict;
the order of overrides never matters. Kept to a few seconds (max_examples, no deadline: the first
build of a loss imports modules)."""

from __future__ import annotations

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longtail.engine.config import (ConfigError, RunConfig, build_config, config_from_dict, dump_yaml,
                                    load_yaml, parse_override)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KNOWN_KEYS = [f"{section}.{key}" for section, keys in {
    "data": ["batch_size", "eval_batch_size", "crop_padding", "flip", "mixing", "mixing_prob", "mixing_alpha",
             "imbalance_factor", "validation_per_class", "sampler", "image_size", "workers", "name", "root"],
    "model": ["head", "head_scale", "name", "channels_last", "options"],
    "optim": ["lr", "momentum", "weight_decay", "epochs", "warmup_epochs", "min_lr", "clip_grad_norm",
              "milestones", "milestone_factors", "schedule", "name", "grad_accumulation"],
    "train": ["seed", "device", "precision", "run_name", "select_on", "threads", "eval_every"],
    "loss": ["name", "omega", "tau", "gamma", "switch_fraction", "reduction"],
    "regularizer": ["name", "alpha", "beta", "weighting"],
}.items() for key in keys]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["ce", "bs", "la", "ccar_bs", "car", "none", "cosine", "cuda", "cpu", "fp16", "5e-4", "nan",
                     "../x", "/abs", ".inf", "1e309", "-0.0", "[1, 2]", "{a: 1}", "yes", "~"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=20),
                 st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(["data", "model", "optim", "train", "loss",
                                                                    "regularizer", "nope"]), st.text(max_size=10)))


def _render(value) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _refused_or_valid(callable_):
    try:
        config, _ = callable_()
    except ConfigError as error:
        assert str(error).strip(), "a ConfigError must carry a message"
        return None
    assert isinstance(config, RunConfig)
    return config


@FAST
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_any_override_gives_a_config_or_a_config_error(pairs):
    overrides = [f"{key}={_render(value)}" for key, value in pairs]
    config = _refused_or_valid(lambda: build_config(overrides=overrides))
    if config is not None:  # whatever was accepted is within every checked range
        for value in (config.optim.lr, config.optim.weight_decay, config.optim.min_lr, config.data.mixing_prob):
            assert math.isfinite(value) and value >= 0


@FAST
@given(st.text(max_size=40))
def test_any_override_text_parses_or_is_refused(text):
    try:
        key, _ = parse_override(text)
    except ConfigError as error:
        assert str(error)
        return
    assert "=" in text and key == text.split("=", 1)[0].strip()


@FAST
@given(st.dictionaries(st.sampled_from(["data", "model", "optim", "train", "loss", "regularizer", "base",
                                        "description", "other"]),
                       st.one_of(values, st.dictionaries(st.sampled_from([k.split(".")[1] for k in KNOWN_KEYS]
                                                                         + ["name", "bogus"]), values, max_size=4)),
                       max_size=4))
def test_any_yaml_file_gives_a_config_or_a_config_error(tmp_path_factory, mapping):
    path = tmp_path_factory.mktemp("cfg") / "generated.yaml"
    path.write_text(yaml.safe_dump(mapping))
    _refused_or_valid(lambda: build_config(config_file=str(path)))


@FAST
@given(st.lists(st.tuples(st.sampled_from(["data", "model", "optim", "train", "loss", "regularizer"]),
                          st.sampled_from(KNOWN_KEYS), st.floats(0.001, 1)), min_size=1, max_size=4),
       st.integers(0, 10), st.booleans())
def test_a_key_given_twice_in_a_yaml_file_is_refused_naming_it(tmp_path_factory, entries, which, nested):
    """Sections (or keys inside one section) written twice: PyYAML would keep the last silently."""
    sections = {}
    for section, key, value in entries:  # each section and key once, as a valid file has them
        sections.setdefault(section, {})[key.split(".")[1]] = value
    section, key, _ = entries[which % len(entries)]
    key = key.split(".")[1]
    if nested:  # the same key twice inside one section
        sections[section] = {**sections[section], key: sections[section][key]}
        extra, repeated = {section: [f"  {key}: 2"]}, key
    else:  # the same section twice
        extra, repeated = {}, section
    lines = []
    for name, keys in sections.items():
        lines += [f"{name}:", *(f"  {k}: {v}" for k, v in keys.items()), *extra.get(name, [])]
    if not nested:
        lines += [f"{section}:", f"  {key}: 1"]
    path = tmp_path_factory.mktemp("cfg") / "twice.yaml"
    path.write_text("\n".join(lines) + "\n")
    try:
        build_config(config_file=str(path))
    except ConfigError as error:
        assert f"the key {repeated!r} is given twice" in str(error)
    else:
        raise AssertionError(f"a repeated key was accepted:\n{path.read_text()}")


valid_overrides = st.fixed_dictionaries({
    "optim.lr": st.floats(1e-6, 10),
    "optim.weight_decay": st.floats(0, 1e-2),
    "optim.momentum": st.floats(0, 0.99),
    "optim.epochs": st.integers(1, 300),
    "data.batch_size": st.integers(1, 4096),
    "data.mixing_prob": st.floats(0, 1),
    "data.flip": st.booleans(),
    "train.seed": st.integers(0, 2**31),
    "loss.omega": st.floats(0.05, 1.0),
    "regularizer.alpha": st.floats(0, 2),
})


@FAST
@given(valid_overrides, st.booleans(), st.randoms(use_true_random=False))
def test_valid_configs_round_trip_and_order_never_matters(tmp_path_factory, chosen, scientific, random):
    # sci notation (5e-4 style) or plain repr: both must read back as the same number
    render = (lambda v: f"{v:e}" if isinstance(v, float) else _render(v)) if scientific else _render
    overrides = [f"{k}={render(v)}" for k, v in chosen.items()] + ["loss.name=ccar_bs", "regularizer.name=car"]
    config, _ = build_config(overrides=overrides)
    assert config.loss.name == "ccar_bs" and config.regularizer.name == "car"
    for key, value in chosen.items():
        section, name = key.split(".")
        if section in ("loss", "regularizer"):
            actual = getattr(config, section).options[name]
        else:
            actual = getattr(getattr(config, section), name)
        assert actual == (float(render(value)) if isinstance(value, float) else value)
    shuffled = list(overrides)
    random.shuffle(shuffled)
    assert build_config(overrides=shuffled)[0].to_dict() == config.to_dict()
    path = tmp_path_factory.mktemp("rt") / "resolved.yaml"
    path.write_text(dump_yaml(config))
    assert build_config(config_file=str(path))[0].to_dict() == config.to_dict()
    assert config_from_dict(config.to_dict()).to_dict() == config.to_dict()


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["e", "E"]))
def test_scientific_notation_reads_as_the_number(number, marker):
    text = f"{number:e}".replace("e", marker)
    assert load_yaml(text) == float(text)
