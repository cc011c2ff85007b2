"""The configuration tree: the example file equals the code, precedence, and one-line errors
that name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from voxcli.config import (
    OUTPUT_FORMATS,
    Config,
    default_config_path,
    describe,
    dump_yaml,
    load_config,
)
from voxcli.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICE_WORDS = ("auto", "cuda", "cuda:N", "mps", "cpu")


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path, monkeypatch):
    """Never read the real ~/.config/voxcli/config.yaml of whoever runs the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home-empty"))


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def flatten(tree: dict) -> dict:
    return {f"{section}.{key}": value for section, keys in tree.items() for key, value in keys.items()}


def config_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, f"not one line: {message!r}"
    return message


# ---------------------------------------------------------------------------------------------
# config.example.yaml == the code
# ---------------------------------------------------------------------------------------------


def test_example_file_loads_to_exactly_the_code_defaults():
    assert load_config(EXAMPLE) == Config()


def test_example_file_lists_every_key_with_its_default_and_nothing_else():
    in_file = flatten(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    in_code = {key: default for key, default, _help in describe()}
    assert list(in_file) == list(in_code), "keys missing, unknown or out of order in config.example.yaml"
    assert in_file == in_code


def test_describe_covers_every_field_of_the_config_tree():
    rows = describe()
    assert [key for key, _, _ in rows] == list(flatten(Config().to_dict()))
    assert {key: default for key, default, _ in rows} == flatten(Config().to_dict())
    assert all(help_text.strip() for _, _, help_text in rows), "every key needs a help text"


def test_example_file_documents_every_key_with_a_comment():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    keys = {key.rsplit(".", 1)[1] for key, _, _ in describe()}
    seen = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not line.startswith("  ") or stripped.startswith("#") or ":" not in stripped:
            continue
        key = stripped.split(":", 1)[0]
        seen.add(key)
        previous = next(p.strip() for p in reversed(lines[:i]) if p.strip())
        assert previous.startswith("#"), f"key {key!r} in config.example.yaml has no comment above it"
    assert seen == keys


# ---------------------------------------------------------------------------------------------
# Precedence: defaults < YAML file < overrides (flags)
# ---------------------------------------------------------------------------------------------


def test_no_file_and_no_overrides_is_the_defaults():
    assert not default_config_path().exists()
    assert load_config() == Config()
    assert load_config(None, {"model.device": None, "output.format": None}) == Config()


def test_file_beats_defaults_and_overrides_beat_file(tmp_path):
    path = write(tmp_path, "model:\n  device: cpu\n  dtype: float32\n  threads: 2\n"
                           "transcription:\n  delay_ms: 960\noutput:\n  format: srt\n  plain: true\n")
    cfg = load_config(path, {"model.device": "cuda:1", "output.format": "vtt", "model.threads": None,
                             "transcription.delay_ms": None, "transcription.language": "fr"})
    assert cfg.model.device == "cuda:1"  # flag over file
    assert cfg.output.format == "vtt"  # flag over file
    assert cfg.model.dtype == "float32"  # file, no flag
    assert cfg.model.threads == 2  # None flag = not given: the file's value stays
    assert cfg.transcription.delay_ms == 960
    assert cfg.transcription.language == "fr"  # flag over default
    assert cfg.output.plain is True
    assert cfg.model.name == Config().model.name  # default, in neither
    assert cfg.model.max_new_tokens == Config().model.max_new_tokens


def test_all_none_overrides_leave_the_file_untouched(tmp_path):
    path = write(tmp_path, "model:\n  dtype: float16\n  offline: true\noutput:\n  format: jsonl\n")
    everything_none = {key: None for key, _, _ in describe()}
    assert load_config(path, everything_none) == load_config(path)


def test_false_and_zero_overrides_are_given_not_missing(tmp_path):
    path = write(tmp_path, "model:\n  offline: true\n  threads: 4\n")
    cfg = load_config(path, {"model.offline": False, "model.threads": 0})
    assert cfg.model.offline is False
    assert cfg.model.threads == 0


def test_user_default_file_is_used_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "voxcli" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("model:\n  device: cpu\n  dtype: float16\n")
    assert default_config_path() == user
    cfg = load_config()
    assert (cfg.model.device, cfg.model.dtype) == ("cpu", "float16")
    # and flags still beat it
    assert load_config(None, {"model.dtype": "bfloat16"}).model.dtype == "bfloat16"


def test_user_default_file_under_home_when_xdg_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    user = tmp_path / "home" / ".config" / "voxcli" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("output:\n  format: vtt\n")
    assert load_config().output.format == "vtt"


def test_explicit_config_file_replaces_the_user_default_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "voxcli" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("model:\n  device: cpu\n  dtype: float16\n")
    explicit = write(tmp_path, "model:\n  dtype: float32\n")
    cfg = load_config(explicit)
    assert cfg.model.dtype == "float32"
    assert cfg.model.device == "auto", "--config FILE is used instead of the user file, not merged with it"


def test_a_broken_user_default_file_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "voxcli" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("model:\n  devise: cpu\n")
    with pytest.raises(ConfigError, match="devise") as info:
        load_config()
    assert str(user) in str(info.value)


def test_empty_file_and_empty_section_are_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "# only a comment\n")) == Config()
    assert load_config(write(tmp_path, "model:\noutput:\n")) == Config()


def test_dump_yaml_round_trips(tmp_path):
    cfg = load_config(None, {"model.device": "cuda:3", "model.dtype": "bfloat16", "model.threads": 6,
                             "model.offline": True, "transcription.delay_ms": 2400,
                             "transcription.language": "de", "output.format": "jsonl"})
    assert load_config(write(tmp_path, dump_yaml(cfg))) == cfg
    assert load_config(write(tmp_path, dump_yaml(Config()), "d.yaml")) == Config()


@pytest.mark.parametrize("key, value", [
    ("model.device", "auto"), ("model.device", "cpu"), ("model.device", "cuda"), ("model.device", "mps"),
    ("model.device", "cuda:0"), ("model.device", "cuda:12"),
    *[("model.dtype", d) for d in DTYPES],
    *[("output.format", f) for f in OUTPUT_FORMATS],
    ("transcription.delay_ms", 80), ("transcription.delay_ms", 480), ("transcription.delay_ms", 1200),
    ("transcription.delay_ms", 2400),
    ("transcription.delay_ms", None), ("model.threads", 0), ("model.threads", 8),
    ("model.max_new_tokens", 1), ("transcription.language", "en"), ("model.name", "/some/dir"),
    ("listen.device", None), ("listen.device", "pulse"), ("listen.save_dir", "/tmp/sessions"),
    ("listen.flush_after_ms", 0), ("listen.silence_db", -30.5), ("listen.silence_db", 0.0),
])
def test_valid_values_are_accepted_from_file_and_flags(tmp_path, key, value):
    section, name = key.split(".")
    from_file = load_config(write(tmp_path, yaml.safe_dump({section: {name: value}})))
    assert getattr(getattr(from_file, section), name) == value
    if value is not None:
        from_flag = load_config(None, {key: value})
        assert getattr(getattr(from_flag, section), name) == value


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the key and what is allowed
# ---------------------------------------------------------------------------------------------


BAD_FILES = [
    # unknown section
    ("modle:\n  device: cpu\n", ["modle", "model", "transcription", "output"]),
    ("transcribe:\n  delay_ms: 80\n", ["transcribe", "model", "transcription", "output"]),
    # unknown key in a section
    ("model:\n  nmae: x\n", ["model.nmae", "model.name", "model.device", "model.dtype", "model.threads",
                             "model.offline", "model.max_new_tokens"]),
    ("output:\n  fromat: srt\n", ["output.fromat", "output.format", "output.plain"]),
    ("transcription:\n  delay: 80\n", ["transcription.delay", "transcription.delay_ms",
                                       "transcription.language"]),
    # wrong types
    ("model:\n  threads: two\n", ["model.threads", "integer", "two"]),
    ("model:\n  threads: '4'\n", ["model.threads", "integer"]),
    ("model:\n  threads: 2.0\n", ["model.threads", "integer"]),
    ("model:\n  threads: true\n", ["model.threads", "integer"]),
    ("model:\n  max_new_tokens: false\n", ["model.max_new_tokens", "integer"]),
    ("transcription:\n  delay_ms: true\n", ["transcription.delay_ms", "integer"]),
    ("transcription:\n  delay_ms: '480'\n", ["transcription.delay_ms", "integer"]),
    ("model:\n  offline: 1\n", ["model.offline", "true or false"]),
    ("output:\n  plain: 'no'\n", ["output.plain", "true or false"]),
    ("model:\n  name: 5\n", ["model.name", "string"]),
    ("transcription:\n  language: ''\n", ["transcription.language", "string"]),
    ("model:\n  device: [cpu]\n", ["model.device"]),
    # bad choices
    ("model:\n  dtype: float64\n", ["model.dtype", "float64", *DTYPES]),
    ("model:\n  dtype: ''\n", ["model.dtype", *DTYPES]),
    ("output:\n  format: xml\n", ["output.format", "xml", *OUTPUT_FORMATS]),
    ("model:\n  device: gpu\n", ["model.device", "gpu", *DEVICE_WORDS]),
    ("model:\n  device: CPU\n", ["model.device", *DEVICE_WORDS]),
    ("model:\n  device: cuda:x\n", ["model.device", "cuda:x", *DEVICE_WORDS]),
    ("model:\n  device: 'cuda:'\n", ["model.device", *DEVICE_WORDS]),
    ("model:\n  device: cuda:1.5\n", ["model.device", *DEVICE_WORDS]),
    ("model:\n  device: 'cuda:²'\n", ["model.device", *DEVICE_WORDS]),
    # ranges
    ("transcription:\n  delay_ms: 100\n", ["transcription.delay_ms", "80", "2400", "100"]),
    ("transcription:\n  delay_ms: 40\n", ["transcription.delay_ms", "80", "2400"]),
    ("transcription:\n  delay_ms: 0\n", ["transcription.delay_ms", "80", "2400"]),
    ("transcription:\n  delay_ms: -80\n", ["transcription.delay_ms", "80", "2400"]),
    ("transcription:\n  delay_ms: 2480\n", ["transcription.delay_ms", "80", "2400"]),
    # The model card allows 80..1200 and 2400 alone: what lies between is refused.
    ("transcription:\n  delay_ms: 1280\n", ["transcription.delay_ms", "1200", "2400", "1280"]),
    ("transcription:\n  delay_ms: 2320\n", ["transcription.delay_ms", "1200", "2400", "2320"]),
    ("model:\n  threads: -1\n", ["model.threads", ">= 0"]),
    ("model:\n  max_new_tokens: 0\n", ["model.max_new_tokens", ">= 1"]),
    ("listen:\n  flush_after_ms: -1\n", ["listen.flush_after_ms", ">= 0"]),
    ("listen:\n  silence_db: 5\n", ["listen.silence_db", "<= 0"]),
    ("listen:\n  silence_db: loud\n", ["listen.silence_db", "number"]),
    ("listen:\n  silence_db: true\n", ["listen.silence_db", "number"]),
    ("listen:\n  silence_db: .nan\n", ["listen.silence_db"]),
    ("listen:\n  save_dir: ''\n", ["listen.save_dir", "string"]),
    # null where not allowed
    ("model:\n  dtype: null\n", ["model.dtype", "null", *DTYPES]),
    ("model:\n  device: ~\n", ["model.device", *DEVICE_WORDS]),
    ("output:\n  format:\n", ["output.format", *OUTPUT_FORMATS]),
    ("model:\n  threads: null\n", ["model.threads", "integer"]),
    ("model:\n  offline: null\n", ["model.offline", "true or false"]),
    # a section that is not a mapping
    ("model: cpu\n", ["'model'", "mapping"]),
    ("output: [text]\n", ["'output'", "mapping"]),
]


@pytest.mark.parametrize("text, must_mention", BAD_FILES, ids=[" ".join(t.split()) for t, _ in BAD_FILES])
def test_bad_file_values_name_the_key_and_what_is_allowed(tmp_path, text, must_mention):
    message = config_error(tmp_path, text)
    path = str(tmp_path / "c.yaml")
    assert path in message, f"the error should name the file: {message!r}"
    for word in must_mention:
        assert word in message, f"{word!r} missing from {message!r}"


@pytest.mark.parametrize("overrides, must_mention", [
    ({"model.dtype": "fp16"}, ["model.dtype", "fp16", *DTYPES]),
    ({"output.format": "xml"}, ["output.format", *OUTPUT_FORMATS]),
    ({"model.device": "cuda:x"}, ["model.device", *DEVICE_WORDS]),
    ({"transcription.delay_ms": 100}, ["transcription.delay_ms", "80", "2400"]),
    ({"model.threads": "3"}, ["model.threads", "integer"]),
    ({"model.nope": 1}, ["model.nope", "model.name", "model.device"]),
    ({"nope.device": "cpu"}, ["nope", "model", "transcription", "output"]),
])
def test_bad_overrides_name_the_key_and_the_command_line(overrides, must_mention):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert "command line" in message
    for word in must_mention:
        assert word in message, f"{word!r} missing from {message!r}"


def test_listen_device_accepts_an_index_as_its_help_says(tmp_path):
    """`listen.device` is "input device name or index": `device: 3` in YAML is an int."""
    cfg = load_config(write(tmp_path, "listen:\n  device: 3\n"))
    assert str(cfg.listen.device) == "3"


def test_an_integer_where_a_float_is_expected_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path, "listen:\n  silence_db: -30\n"))
    assert cfg.listen.silence_db == -30.0


def test_overrides_are_validated_after_the_file_and_win_only_when_valid(tmp_path):
    path = write(tmp_path, "output:\n  format: srt\n")
    with pytest.raises(ConfigError, match="output.format"):
        load_config(path, {"output.format": "doc"})


@pytest.mark.parametrize("text", ["- model\n- output\n", "just a string\n", "42\n", "[1, 2]\n"])
def test_a_file_that_is_not_a_mapping(tmp_path, text):
    message = config_error(tmp_path, text)
    assert str(tmp_path / "c.yaml") in message
    assert "mapping" in message
    for section in ("model", "transcription", "output"):
        assert section in message


@pytest.mark.parametrize("text, line", [
    ("model:\n  device: cpu\n\tdtype: auto\n", 3),  # a tab
    ("model:\n  device: cpu\n dtype: auto\n", 3),  # bad indentation
    ("model:\n  device: cpu\n  dtype: a: b\n", 3),  # a stray colon
    ("# comment\n\noutput:\n  format: 'text\n  plain: true\n", 4),  # unclosed quote
], ids=["tab", "indentation", "colon", "unclosed quote"])
def test_invalid_yaml_says_the_line(tmp_path, text, line):
    message = config_error(tmp_path, text)
    assert str(tmp_path / "c.yaml") in message
    assert "YAML" in message
    assert f"line {line}" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nope.yaml") in message and "does not exist" in message


def test_directory_as_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "directory" in message


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_bad_value_leaves_no_half_applied_state_visible(tmp_path):
    # load_config builds a fresh Config each time: an error in one call cannot leak into the next.
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "model:\n  device: cpu\n  dtype: nope\n"))
    assert load_config() == Config()


def test_the_api_key_comes_from_the_environment_below_flags_and_is_never_dumped(monkeypatch, tmp_path):
    from voxcli.config import dump_yaml

    path = tmp_path / "c.yaml"
    path.write_text("model:\n  api_key: from-file\n")
    assert load_config(path).model.api_key == "from-file"
    monkeypatch.setenv("VOXCLI_API_KEY", "from-env")
    assert load_config(path).model.api_key == "from-env"
    cfg = load_config(path, {"model.api_key": "from-flag"})
    assert cfg.model.api_key == "from-flag"
    dumped = dump_yaml(cfg)
    assert "from-flag" not in dumped and "api_key: <hidden>" in dumped
    monkeypatch.delenv("VOXCLI_API_KEY")
    assert "api_key: null" in dump_yaml(load_config(None))


def test_network_bounds_must_be_positive():
    with pytest.raises(ConfigError, match=r"model.timeout_s must be a number >= 1.0"):
        load_config(None, {"model.timeout_s": 0})
    assert load_config(None, {"model.reconnect_s": 0}).model.reconnect_s == 0.0
