import pytest

from lnpt.shared.config import ConfigError, load_config


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "lnpt.toml"
    path.write_text('[prune]\nsparsity = 0.95\nscore = "snip"\n[client]\naddresses = ["a:1", "b:2"]\n')
    config = load_config(path, ["prune.sparsity=0.98", "train.epochs=3", "client.insecure=true"])
    assert config.prune.sparsity == 0.98 and config.prune.score == "snip"
    assert config.train.epochs == 3 and config.client.insecure is True
    assert config.client.addresses == ["a:1", "b:2"]
    assert config.server.port == 50051  # untouched default


@pytest.mark.parametrize(
    "text, message",
    [
        ("[prune]\nsparsity = 1.5\n", "prune.sparsity = 1.5: must be at most 0.9999"),
        ('[prune]\nscope = "best"\n', "prune.scope = 'best': expected one of 'global', 'local'"),
        ("[prune]\nspars = 0.9\n", "prune.spars: unknown key; [prune] accepts: score, objective, sparsity"),
        ("[pruning]\nsparsity = 0.9\n", "unknown section [pruning]"),
        ('[train]\nepochs = "ten"\n', "train.epochs = 'ten': expected an integer"),
        ("[train]\naugment = 1\n", "train.augment = 1: expected true or false"),
        ("[client]\naddresses = [1, 2]\n", "client.addresses = [1, 2]: expected a list of str"),
        ("[prune\n", "not valid TOML"),
    ],
)
def test_bad_config_names_key_value_and_expectation(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["sparsity=0.9"])
    with pytest.raises(ConfigError, match="--set: server.port = 70000: must be at most 65535"):
        load_config(None, ["server.port=70000"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_config_reference_lists_every_key_with_its_default(repo_root):
    """docs/CONFIG.md is the user's reference: every key and default must match the code."""
    import dataclasses
    import json
    import re
    import typing

    from lnpt.shared.config import Config

    text = (repo_root / "docs" / "CONFIG.md").read_text()
    documented = {}
    section = None
    for line in text.splitlines():
        if heading := re.match(r"## \[(\w+)\]", line):
            section = heading.group(1)
        elif row := re.match(r"\| `(\w+)` \| `(.*?)` \|", line):
            documented[(section, row.group(1))] = row.group(2)
    expected = {}
    for section_field in dataclasses.fields(Config):
        defaults = typing.get_type_hints(Config)[section_field.name]()
        for key in dataclasses.fields(defaults):
            value = getattr(defaults, key.name)
            expected[(section_field.name, key.name)] = (
                "true" if value is True else "false" if value is False
                else json.dumps(value) if isinstance(value, (str, list)) else repr(value))
    assert documented == expected


def test_flags_become_validated_overrides_only_when_given(tmp_path):
    """Flags map to config keys through one helper: untouched flags leave the file's values alone,
    any path survives quoting, and the result goes through the same validation as the file."""
    import argparse

    from lnpt.shared.cli import config_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--token-file")
    parser.add_argument("--insecure", action="store_true", default=None)
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    parser.add_argument("--epochs", type=int)
    keys = {"token_file": "client.token_file", "insecure": "client.insecure", "augment": "train.augment",
            "epochs": "train.epochs"}
    path = tmp_path / 'odd "dir" \\ name' / "token"
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    given = parser.parse_args(["--token-file", str(path), "--no-augment", "--epochs", "3"])
    config = config_from_args(given, keys)
    assert config.client.token_file == str(path) and config.train.augment is False and config.train.epochs == 3
    file = tmp_path / "edge.toml"
    file.write_text("[client]\ninsecure = true\n[train]\nepochs = 7\n")
    untouched = config_from_args(parser.parse_args(["--config", str(file)]), keys)
    assert untouched.client.insecure is True and untouched.train.epochs == 7 and untouched.train.augment is True
    # precedence: a flag beats --set, which beats the file; a bad flag is reported under its own name
    ranked = config_from_args(parser.parse_args(["--config", str(file), "--set", "train.epochs=5"]), keys)
    assert ranked.train.epochs == 5
    assert config_from_args(parser.parse_args(["--config", str(file), "--set", "train.epochs=5", "--epochs", "2"]),
                            keys).train.epochs == 2
    with pytest.raises(ConfigError, match="--epochs: train.epochs = 0"):
        config_from_args(parser.parse_args(["--epochs", "0"]), keys)
