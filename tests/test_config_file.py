"""Config files are read within bounds: alias bombs, recursive aliases, deep nesting and huge files are refused
at load time, fast and in little memory, with a message naming the file and the key."""

import json
import tracemalloc

import pytest

from hf_transfer.cli.main import main as cli_main
from hf_transfer.config import load_config_file, parse_args
from hf_transfer.config.file import MAX_DEPTH, MAX_FILE_BYTES
from hf_transfer.errors import TransferConfigError

HEAD = "mode: task\nbackbone: test_resnet\ntarget: builtin:digits-handwritten\noutput_dir: out\n"


def _bomb(key: str, levels: int = 40) -> str:
    """``key`` holding 2**levels leaves through a chain of doubling aliases (a billion laughs)."""
    lines = [f"{key}:", "  - &l0 [lol, lol]"]
    lines += [f"  - &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return HEAD + "\n".join(lines) + "\n"


def _bomb_in_mapping(key: str, levels: int = 40) -> str:
    """The same chain inside a mapping value (as method_args holds one)."""
    lines = [f"{key}:", "  l0: &l0 [lol, lol]"]
    lines += [f"  l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return HEAD + "\n".join(lines) + "\n"


def _refused_quickly(path) -> str:
    """The TransferConfigError of loading ``path``, checked to peak under 20 MB (the bombs took minutes and 4 GB).
    No wall-clock bound: the memory one is what a bomb breaks, and it does not depend on the machine's load (a
    bomb that got through would also run into the suite's per-test timeout)."""
    tracemalloc.start()
    try:
        with pytest.raises(TransferConfigError) as err:
            load_config_file(str(path))
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 20e6, f"peak {peak / 1e6:.1f} MB while loading {path}"
    return str(err.value)


@pytest.mark.parametrize(
    "key, text",
    [
        ("report_to", _bomb("report_to")),
        ("freeze", _bomb("freeze")),
        ("method_args", _bomb_in_mapping("method_args")),
    ],
)
def test_alias_bomb_is_refused_at_load_naming_file_and_key(tmp_path, capsys, key, text):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    message = _refused_quickly(path)
    assert str(path) in message and repr(key) in message and "aliases" in message
    assert "line 5" in message  # the key's line
    # the same refusal through every entry point that reads a config, before the argv round trip
    with pytest.raises(TransferConfigError, match="expands through YAML aliases"):
        parse_args(["--config", str(path)])
    assert cli_main(["plan", "--config", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_recursive_alias_is_refused_naming_file_and_key(tmp_path):
    path = tmp_path / "recursive.yaml"
    path.write_text(HEAD + "report_to: &r [none, *r]\n")
    message = _refused_quickly(path)
    assert str(path) in message and "'report_to'" in message and "recursive alias" in message
    assert "Circular reference" not in message


def test_a_reused_anchor_within_the_bound_still_loads(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(HEAD + "freeze: &groups stem,stage_0\nrun_name: *groups\nmethod_args: &m {}\n")
    data = load_config_file(str(path))
    assert data["freeze"] == data["run_name"] == "stem,stage_0"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deep_nesting_is_refused_naming_the_file(tmp_path, suffix):
    # anchor-free: 100000 nested lists overflow PyYAML's recursive composer (and json's) with a bare RecursionError
    path = tmp_path / f"deep{suffix}"
    depth = 100_000
    if suffix == ".json":
        path.write_text('{"mode": "task", "method_args": {"a": ' + "[" * depth + "]" * depth + "}}")
    else:
        path.write_text(HEAD + "method_args: {a: " + "[" * depth + "]" * depth + "}\n")
    message = _refused_quickly(path)
    assert str(path) in message and "nest" in message
    if suffix == ".yaml":
        assert "'method_args'" in message and f"deeper than {MAX_DEPTH} levels" in message


def test_nesting_up_to_the_bound_loads(tmp_path):
    path = tmp_path / "nested.yaml"
    value = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # the root mapping is level 1
    path.write_text(f"method_args: {value}\n")
    assert load_config_file(str(path))["method_args"] is not None
    path.write_text(f"method_args: [{value}]\n")
    with pytest.raises(TransferConfigError, match=f"deeper than {MAX_DEPTH}"):
        load_config_file(str(path))


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(HEAD + "run_name: " + "x" * MAX_FILE_BYTES + "\n")
    message = _refused_quickly(path)
    assert str(path) in message and f"larger than {MAX_FILE_BYTES} bytes" in message


def test_parse_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: task\nfreeze: [stem\n")
    with pytest.raises(TransferConfigError, match=f"Config file {str(bad)!r} is not valid YAML"):
        load_config_file(str(bad))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"mode": "task"})[:-1])
    with pytest.raises(TransferConfigError, match=f"Config file {str(bad_json)!r} is not valid JSON"):
        load_config_file(str(bad_json))


def test_the_loader_stays_safe(tmp_path):
    path = tmp_path / "tagged.yaml"
    path.write_text("mode: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(TransferConfigError, match="not valid YAML"):
        load_config_file(str(path))


# --- a file fills the dataclasses directly (no command line is rebuilt from it) ---------------------------
def _file(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(HEAD + text)
    return str(path)


def test_a_file_is_typed_by_the_parser_and_never_turned_into_argv(tmp_path, monkeypatch):
    from transformers import HfArgumentParser

    def no_argv(*_a, **_k):
        raise AssertionError("the config was parsed as a command line")

    monkeypatch.setattr(HfArgumentParser, "parse_args_into_dataclasses", no_argv)
    # PyYAML reads 1e-3 (no dot) as a string: the parser's own type makes it the number
    path = _file(tmp_path, "learning_rate: 1e-3\nmax_steps: 4\nimage_column: 1.0\nk_shot: null\nbf16: false\n")
    args, training = parse_args(["--config", path])
    assert (training.learning_rate, training.max_steps, args.image_column, args.k_shot) == (1e-3, 4, "1.0", None)
    args, training = parse_args(["--config", path, "--max_steps", "7", "--k_shot=2"])  # flags override the file
    assert (training.max_steps, args.k_shot, training.learning_rate) == (7, 2, 1e-3)
    assert "learning_rate" not in args.recipe_defaults  # given in the file: no recipe default replaces it


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_steps: 5.5\n", r"max_steps=5.5: invalid literal for int"),
        ("input_path: slow\n", r"input_path='slow': choose one of \['fast', 'stock'\]"),
        ("eval_strategy: sometimes\n", r"eval_strategy='sometimes': choose one of"),
        ("max_step: 3\n", r"unknown key\(s\) \['max_step'\]"),
    ],
)
def test_a_file_value_of_the_wrong_type_or_choice_is_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(TransferConfigError, match=message):
        parse_args(["--config", _file(tmp_path, text)])


def test_a_prefix_typo_on_the_command_line_is_refused(tmp_path):
    with pytest.raises(TransferConfigError, match=r"Unknown argument\(s\): \['--max_step', '3'\]"):
        parse_args(["--config", _file(tmp_path, ""), "--max_step", "3"])


@pytest.mark.parametrize(
    "key, value, flag",
    [
        ("hub_strategy", "every_save", ["--hub_strategy", "every_save"]),
        ("remove_unused_columns", True, ["--remove_unused_columns", "true"]),
        ("label_names", ["label"], ["--label_names", "label"]),
    ],
)
def test_what_the_run_sets_itself_is_refused_when_given_otherwise(tmp_path, key, value, flag):
    from hf_transfer.config import arguments_from_dict

    base = {"mode": "task", "backbone": "test_resnet", "target": "builtin:digits-handwritten", "output_dir": "o"}
    with pytest.raises(TransferConfigError, match=rf"{key}=.*the run sets {key}="):
        arguments_from_dict({**base, key: value})
    with pytest.raises(TransferConfigError, match=rf"{key}=.*the run sets {key}="):
        parse_args(["--config", _file(tmp_path, ""), *flag])
    # the value the run uses is accepted (a recipe may spell it out)
    same = {"hub_strategy": "end", "remove_unused_columns": False, "label_names": ["labels"]}[key]
    _, training = arguments_from_dict({**base, key: same})
    assert getattr(training, key) == same or getattr(getattr(training, key), "value", None) == same
