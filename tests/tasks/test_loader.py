"""The task contract: seed task folders load, and every way a task can be wrong is a TaskConfigError that
names the file and the problem."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pytest

from llm_infer_dagster.deployment import SOURCE_TASK_CONFIGS, Deployment
from llm_infer_dagster.errors import SettingsError, TaskConfigError
from llm_infer_dagster.orchestration.assets.factory import code_versions
from llm_infer_dagster.tasks.loader import TaskConfig, TaskFiles, discover_tasks, load_task, resolve_task_folder
from llm_infer_dagster.tasks.sampling import SAMPLING_KEYS
from llm_infer_dagster.tasks.versions import task_code_versions

EXAMPLES = SOURCE_TASK_CONFIGS

# A complete, valid seed task over ``data.jsonl`` next to it; tests replace one piece at a time.
GOOD_TASK = """
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_file_list(input_path):
    return [os.path.join(HERE, "data.jsonl")]


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return "Q: " + org_data["q"]


def extract_answer(model_response):
    return model_response.strip()
"""


def make_task(root: Path, name: str, source: str = GOOD_TASK, rows: int = 3, sampling: dict | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "task_config.py").write_text(textwrap.dedent(source), encoding="utf-8")
    (folder / "data.jsonl").write_text("".join(json.dumps({"q": f"q{i}"}) + "\n" for i in range(rows)))
    if sampling is not None:
        (folder / "sampling_params.json").write_text(json.dumps(sampling))
    return folder


def replace_fn(name: str, new_def: str) -> str:
    """GOOD_TASK with the function ``name`` replaced by ``new_def``."""
    lines = GOOD_TASK.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"def {name}("))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("def ")), len(lines))
    return "\n".join(lines[:start] + textwrap.dedent(new_def).splitlines() + ["", ""] + lines[end:])


# ---------------------------------------------------------------------------------------------- examples


@pytest.mark.parametrize("name", ["basic_example", "chat_example", "qa_regex"])
def test_each_example_loads_and_reads(name: str) -> None:
    task = load_task(EXAMPLES, name)
    assert isinstance(task, TaskConfig)
    assert task.folder == (EXAMPLES / name).resolve()
    files = task.list_files(None)
    assert files, f"{name} lists no files"
    for path in files:  # every file it lists is data it can read (not its own sampling_params.json)
        assert task.read_rows(path), path
    rows = task.read_rows(files[0])
    assert rows and all(isinstance(r, dict) for r in rows)
    prompt = task.format_prompt(rows[0])
    assert isinstance(prompt, str | list)
    # The task's sampling_params.json overrides the defaults key by key.
    own = json.loads((EXAMPLES / name / "sampling_params.json").read_text())
    defaults = json.loads((EXAMPLES / "default_sampling_params.json").read_text())
    for key, value in {**defaults, **own}.items():
        assert task.sampling_params[key] == value


def test_examples_are_discovered() -> None:
    assert {"basic_example", "chat_example", "qa_regex"} <= set(discover_tasks(EXAMPLES))


def test_chat_example_returns_messages_and_qa_regex_extracts() -> None:
    chat = load_task(EXAMPLES, "chat_example")
    row = chat.read_rows(chat.list_files(None)[0])[0]
    msgs = chat.format_prompt(row)
    assert isinstance(msgs, list) and [m["role"] for m in msgs] == ["system", "user"]
    qa = load_task(EXAMPLES, "qa_regex")
    assert qa.extract_answer("so the answer is 62.") == 62
    assert qa.extract_answer("no idea") is None


def test_good_tmp_task_loads_with_builtin_defaults(tmp_path: Path) -> None:
    make_task(tmp_path, "good")
    task = load_task(tmp_path, "good")
    files = task.list_files(None)
    assert [Path(f).name for f in files] == ["data.jsonl"]
    assert task.read_rows(files[0]) == [{"q": "q0"}, {"q": "q1"}, {"q": "q2"}]
    assert task.format_prompt({"q": "x"}) == "Q: x"
    # No default_sampling_params.json in tmp_path: the seed's built-in defaults apply.
    assert task.sampling_params == {"temperature": 1.0, "max_tokens": 32, "top_p": 0.9, "top_k": 50}


def test_task_sampling_overrides_defaults_file(tmp_path: Path) -> None:
    (tmp_path / "default_sampling_params.json").write_text(json.dumps({"temperature": 0.5, "max_tokens": 8}))
    make_task(tmp_path, "t", sampling={"max_tokens": 64})
    assert load_task(tmp_path, "t").sampling_params == {"temperature": 0.5, "max_tokens": 64}


# ----------------------------------------------------------------------------------- functions and import


def test_missing_functions_are_listed(tmp_path: Path) -> None:
    source = GOOD_TASK.replace("def format_prompt(", "def _format_prompt(").replace(
        "def extract_answer(", "def _extract_answer("
    )
    make_task(tmp_path, "t", source)
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t")
    msg = str(exc.value)
    assert str(tmp_path / "t" / "task_config.py") in msg
    assert "format_prompt" in msg and "extract_answer" in msg
    assert "missing" in msg
    # Only the missing ones are named as missing.
    missing_part = msg.split("missing function(s)")[1].split(";")[0]
    assert "get_file_list" not in missing_part and "read_file" not in missing_part


def test_non_callable_counts_as_missing(tmp_path: Path) -> None:
    make_task(tmp_path, "t", GOOD_TASK + "\nextract_answer = None\n")
    with pytest.raises(TaskConfigError, match=r"missing function\(s\) extract_answer"):
        load_task(tmp_path, "t")


@pytest.mark.parametrize(
    "new_def",
    [
        "def read_file(file_path, encoding):\n    return []\n",
        "def read_file():\n    return []\n",
    ],
    ids=["two-args", "no-args"],
)
def test_wrong_arity_is_refused(tmp_path: Path, new_def: str) -> None:
    make_task(tmp_path, "t", replace_fn("read_file", new_def))
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t")
    assert str(tmp_path / "t" / "task_config.py") in str(exc.value)
    assert "read_file must take exactly one argument" in str(exc.value)


def test_optional_extra_args_are_accepted(tmp_path: Path) -> None:
    make_task(tmp_path, "t", replace_fn("extract_answer", "def extract_answer(r, strict=False):\n    return r\n"))
    assert load_task(tmp_path, "t").extract_answer("x") == "x"


def test_import_error_names_file_and_cause(tmp_path: Path) -> None:
    make_task(tmp_path, "t", "import no_such_module_for_llm_infer_tests\n" + GOOD_TASK)
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t")
    msg = str(exc.value)
    assert str(tmp_path / "t" / "task_config.py") in msg
    assert "ModuleNotFoundError" in msg and "no_such_module_for_llm_infer_tests" in msg


def test_syntax_error_names_file(tmp_path: Path) -> None:
    make_task(tmp_path, "t", GOOD_TASK + "\ndef broken(:\n")
    with pytest.raises(TaskConfigError, match="SyntaxError") as exc:
        load_task(tmp_path, "t")
    assert "task_config.py" in str(exc.value)


def test_sibling_helper_module_is_importable_and_sys_path_restored(tmp_path: Path) -> None:
    folder = make_task(
        tmp_path,
        "t",
        "import llm_infer_sibling_helper_a as h\n"
        + GOOD_TASK.replace('return "Q: " + org_data["q"]', "return h.render(org_data)"),
    )
    (folder / "llm_infer_sibling_helper_a.py").write_text("def render(row):\n    return 'H:' + row['q']\n")
    path_before = list(sys.path)
    try:
        task = load_task(tmp_path, "t")
        assert task.format_prompt({"q": "z"}) == "H:z"
        assert sys.path == path_before
    finally:
        sys.modules.pop("llm_infer_sibling_helper_a", None)


def test_two_tasks_with_same_named_helper_each_get_their_own(tmp_path: Path) -> None:
    for name in ("ta", "tb"):
        folder = make_task(
            tmp_path,
            name,
            "import llm_infer_shared_helper_name as h\n"
            + GOOD_TASK.replace('return "Q: " + org_data["q"]', "return h.NAME"),
        )
        (folder / "llm_infer_shared_helper_name.py").write_text(f"NAME = {name!r}\n")
    try:
        a = load_task(tmp_path, "ta")
        b = load_task(tmp_path, "tb")
        assert a.format_prompt({}) == "ta"
        assert b.format_prompt({}) == "tb"
    finally:
        sys.modules.pop("llm_infer_shared_helper_name", None)


def test_task_with_future_annotations_dataclass_loads(tmp_path: Path) -> None:
    source = (
        "from __future__ import annotations\nfrom dataclasses import dataclass\n\n\n@dataclass\n"
        "class Row:\n    q: str\n" + GOOD_TASK
    )
    name = "future_dataclass_task"
    sys.modules.pop(f"llm_infer_task_{name}", None)  # only a fresh import shows the bug
    make_task(tmp_path, name, source)
    assert load_task(tmp_path, name).format_prompt({"q": "a"}) == "Q: a"


# --------------------------------------------------------------------------------------- get_file_list


def test_get_file_list_non_list(tmp_path: Path) -> None:
    make_task(tmp_path, "t", replace_fn("get_file_list", "def get_file_list(p):\n    return 'a.jsonl'\n"))
    task = load_task(tmp_path, "t")
    with pytest.raises(TaskConfigError) as exc:
        task.list_files(None)
    assert "task_config.py" in str(exc.value) and "must return a list" in str(exc.value)
    assert "str" in str(exc.value)


def test_get_file_list_missing_file(tmp_path: Path) -> None:
    make_task(
        tmp_path,
        "t",
        replace_fn("get_file_list", "def get_file_list(p):\n    return [os.path.join(HERE, 'nope.jsonl')]\n"),
    )
    task = load_task(tmp_path, "t")
    with pytest.raises(TaskConfigError) as exc:
        task.list_files("/some/input")
    msg = str(exc.value)
    assert "task_config.py" in msg and "nope.jsonl" in msg and "not a file" in msg
    assert "/some/input" in msg


def test_get_file_list_non_path_item_and_duplicates(tmp_path: Path) -> None:
    make_task(tmp_path, "t", replace_fn("get_file_list", "def get_file_list(p):\n    return [3]\n"))
    with pytest.raises(TaskConfigError, match="int at position 0"):
        load_task(tmp_path, "t").list_files(None)
    make_task(
        tmp_path,
        "u",
        replace_fn("get_file_list", "def get_file_list(p):\n    return [os.path.join(HERE, 'data.jsonl')] * 2\n"),
    )
    with pytest.raises(TaskConfigError, match="same file twice"):
        load_task(tmp_path, "u").list_files(None)


def test_get_file_list_raising_is_wrapped(tmp_path: Path) -> None:
    make_task(tmp_path, "t", replace_fn("get_file_list", "def get_file_list(p):\n    return os.listdir(p)\n"))
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t").list_files(str(tmp_path / "absent"))
    assert "get_file_list" in str(exc.value) and "FileNotFoundError" in str(exc.value)


def test_get_file_list_gets_input_path(tmp_path: Path) -> None:
    make_task(
        tmp_path,
        "t",
        replace_fn(
            "get_file_list", "def get_file_list(p):\n    return sorted(os.path.join(p, f) for f in os.listdir(p))\n"
        ),
    )
    data = tmp_path / "in"
    data.mkdir()
    for n in ("b.txt", "a.txt"):
        (data / n).write_text("x")
    assert [Path(f).name for f in load_task(tmp_path, "t").list_files(str(data))] == ["a.txt", "b.txt"]


# ---------------------------------------------------------------------------------------------- read_file


def test_read_file_raising_names_the_file(tmp_path: Path) -> None:
    folder = make_task(tmp_path, "t")
    (folder / "data.jsonl").write_text('{"q": "ok"}\nnot json\n')
    task = load_task(tmp_path, "t")
    with pytest.raises(TaskConfigError) as exc:
        task.read_rows(str(folder / "data.jsonl"))
    msg = str(exc.value)
    assert str(folder / "data.jsonl") in msg
    assert "JSONDecodeError" in msg and "task_config.py" in msg


def test_read_file_non_list(tmp_path: Path) -> None:
    make_task(tmp_path, "t", replace_fn("read_file", "def read_file(p):\n    return {'q': 'x'}\n"))
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t").read_rows("f.jsonl")
    assert "'f.jsonl'" in str(exc.value) and "list of dicts" in str(exc.value) and "dict" in str(exc.value)


def test_read_file_generator_is_not_a_list(tmp_path: Path) -> None:
    make_task(tmp_path, "t", replace_fn("read_file", "def read_file(p):\n    return ({'q': i} for i in range(2))\n"))
    with pytest.raises(TaskConfigError, match="generator"):
        load_task(tmp_path, "t").read_rows("f.jsonl")


def test_read_file_non_dict_row_names_row_number(tmp_path: Path) -> None:
    make_task(
        tmp_path,
        "t",
        replace_fn("read_file", "def read_file(p):\n    return [{'q': 'a'}, {'q': 'b'}, ['c'], {'q': 'd'}]\n"),
    )
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t").read_rows("f.jsonl")
    msg = str(exc.value)
    assert "row 2" in msg and "list" in msg and "'f.jsonl'" in msg


# ------------------------------------------------------------------------------------------- task names


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".", "/etc", "", ".hidden", "a\\b", "x y"])
def test_escaping_or_odd_task_names_are_refused(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "cfg"
    make_task(root, "good")
    # Real task folders where an escape would land, so only the name check can stop it.
    make_task(tmp_path, "x")
    (root / "a").mkdir()
    make_task(root / "a", "b")
    with pytest.raises(TaskConfigError) as exc:
        load_task(root, bad)
    assert "good" in str(exc.value), "the message should list the available tasks"


def test_absolute_path_to_real_task_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cfg"
    make_task(root, "good")
    other = make_task(tmp_path, "elsewhere")
    with pytest.raises(TaskConfigError):
        load_task(root, str(other))


def test_symlink_leaving_config_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cfg"
    make_task(root, "good")
    outside = make_task(tmp_path, "outside")
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(TaskConfigError, match="leaves the task config dir"):
        resolve_task_folder(root, "link")


def test_unknown_task_lists_available(tmp_path: Path) -> None:
    make_task(tmp_path, "alpha")
    make_task(tmp_path, "beta")
    (tmp_path / "not_a_task").mkdir()  # a folder without task_config.py
    (tmp_path / "plainfile").write_text("x")
    for name in ("gamma", "not_a_task", "plainfile"):
        with pytest.raises(TaskConfigError) as exc:
            load_task(tmp_path, name)
        msg = str(exc.value)
        assert repr(name) in msg and "alpha, beta" in msg
        assert "not_a_task" not in msg.split("tasks in")[1]
    assert discover_tasks(tmp_path) == ["alpha", "beta"]


def test_missing_config_dir(tmp_path: Path) -> None:
    """What a wheel install without the source checkout's examples meets: where to point, in one line."""
    with pytest.raises(TaskConfigError, match="does not exist: set --config_path or LLM_INFER_TASK_CONFIGS") as e:
        load_task(tmp_path / "nope", "t")
    assert "the examples are the source repository's task_configs/" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ sampling


def test_unknown_sampling_key_lists_valid_keys(tmp_path: Path) -> None:
    make_task(tmp_path, "t", sampling={"temprature": 0.5})
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t")
    msg = str(exc.value)
    assert str(tmp_path / "t" / "sampling_params.json") in msg
    assert "temprature" in msg and 'did you mean "temperature"' in msg
    for key in SAMPLING_KEYS:
        assert key in msg


def test_bad_sampling_value_and_bad_json(tmp_path: Path) -> None:
    make_task(tmp_path, "t", sampling={"max_tokens": "32"})
    with pytest.raises(TaskConfigError, match='"max_tokens" must be an integer'):
        load_task(tmp_path, "t")
    folder = make_task(tmp_path, "u")
    (folder / "sampling_params.json").write_text("{bad json")
    with pytest.raises(TaskConfigError, match="invalid JSON at line 1"):
        load_task(tmp_path, "u")


def test_bad_defaults_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "default_sampling_params.json").write_text(json.dumps({"top_p": 2}))
    make_task(tmp_path, "t")
    with pytest.raises(TaskConfigError) as exc:
        load_task(tmp_path, "t")
    assert "default_sampling_params.json" in str(exc.value) and "top_p" in str(exc.value)


# ------------------------------------------------------------------------------------------- format_prompt


def test_format_prompt_chat_messages_pass(tmp_path: Path) -> None:
    make_task(
        tmp_path,
        "t",
        replace_fn("format_prompt", "def format_prompt(r):\n    return [{'role': 'user', 'content': r['q']}]\n"),
    )
    assert load_task(tmp_path, "t").format_prompt({"q": "hi"}) == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "ret, type_name",
    [
        ("None", "NoneType"),
        ("42", "int"),
        ("{'role': 'user', 'content': 'x'}", "dict"),
        ("[{'role': 'user'}]", "list"),
        ("[{'role': 'user', 'content': 3}]", "list"),
        ("['hello']", "list"),
    ],
)
def test_format_prompt_bad_type_raises_value_error(tmp_path: Path, ret: str, type_name: str) -> None:
    make_task(tmp_path, "t", replace_fn("format_prompt", f"def format_prompt(r):\n    return {ret}\n"))
    with pytest.raises(ValueError, match=f"format_prompt must return a str .* got {type_name}"):
        load_task(tmp_path, "t").format_prompt({"q": "x"})


# --------------------------------------------------------------------- the seed's file and function flags

RENAMED_TASK = """
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def list_inputs(input_path):
    return [os.path.join(HERE, "data.jsonl")]


def load_rows(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_prompt(org_data):
    return "Question: " + org_data["q"]


def shout_prompt(org_data):
    return "QUESTION: " + org_data["q"].upper()


def parse_answer(model_response):
    return model_response.strip().upper()
"""

RENAMED = TaskFiles(
    task_config_fn="my_task.py",
    sampling_params_fn="my_sampling.json",
    get_file_list_func="list_inputs",
    read_file_func="load_rows",
    format_prompt_func="make_prompt",
    extract_answer_func="parse_answer",
)


def make_renamed_task(root: Path, name: str = "renamed") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "my_task.py").write_text(textwrap.dedent(RENAMED_TASK), encoding="utf-8")
    (folder / "data.jsonl").write_text("".join(json.dumps({"q": f"q{i}"}) + "\n" for i in range(3)))
    (folder / "my_sampling.json").write_text(json.dumps({"temperature": 0.25}))
    (folder / "sampling_params.json").write_text(json.dumps({"temperature": 0.75}))  # not the chosen file
    return folder


def test_renamed_task_file_and_functions_load_and_run(tmp_path: Path) -> None:
    folder = make_renamed_task(tmp_path)
    assert discover_tasks(tmp_path) == []  # no task_config.py: not a task by default
    assert discover_tasks(tmp_path, RENAMED) == ["renamed"]
    task = load_task(tmp_path, "renamed", RENAMED)
    assert task.files == RENAMED and task.config_file == folder.resolve() / "my_task.py"
    (path,) = task.list_files(None)
    rows = task.read_rows(path)
    assert rows == [{"q": "q0"}, {"q": "q1"}, {"q": "q2"}]
    assert task.format_prompt(rows[1]) == "Question: q1"
    assert task.extract_answer(" yes ") == "YES"
    assert task.sampling_params["temperature"] == 0.25  # my_sampling.json, not sampling_params.json
    other = load_tasks_with(tmp_path, format_prompt_func="shout_prompt")
    assert other.format_prompt(rows[1]) == "QUESTION: Q1"


def load_tasks_with(root: Path, **changes: str) -> TaskConfig:
    return load_task(root, "renamed", dataclasses.replace(RENAMED, **changes))


def test_settings_carry_the_names_to_every_task_of_the_code_location(tmp_path: Path) -> None:
    from llm_infer_dagster.orchestration.definitions import build_task_bundles

    make_renamed_task(tmp_path, "one")
    make_renamed_task(tmp_path, "two")
    make_task(tmp_path, "plain")  # a task_config.py folder: not a task under these names
    settings = Deployment.from_env(task_configs=str(tmp_path), output_dir=str(tmp_path / "out"), **RENAMED.__dict__)
    assert TaskFiles.from_settings(settings) == RENAMED
    bundles = build_task_bundles(settings)
    assert [b.task.name for b in bundles] == ["one", "two"]
    assert all(b.task.files == RENAMED for b in bundles)


def test_missing_renamed_function_and_file_are_named(tmp_path: Path) -> None:
    make_renamed_task(tmp_path)
    with pytest.raises(TaskConfigError) as e:
        load_tasks_with(tmp_path, format_prompt_func="build_prompt")
    msg = str(e.value)
    assert "\n" not in msg and "my_task.py: missing function(s) build_prompt" in msg
    assert "format_prompt=build_prompt" in msg
    with pytest.raises(TaskConfigError) as e:
        load_tasks_with(tmp_path, task_config_fn="their_task.py")
    assert "their_task.py (--task_config_fn) does not exist" in str(e.value) and "\n" not in str(e.value)


def test_errors_of_renamed_functions_name_the_function_used(tmp_path: Path) -> None:
    make_renamed_task(tmp_path)
    task = load_task(tmp_path, "renamed", RENAMED)
    with pytest.raises(TaskConfigError, match=r"my_task\.py: load_rows\('/no/such/file'\) raised FileNotFoundError"):
        task.read_rows("/no/such/file")


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("task_config_fn", "../other/task_config.py"),
        ("task_config_fn", "sub/task_config.py"),
        ("task_config_fn", "/etc/task_config.py"),
        ("task_config_fn", "task_config.txt"),
        ("task_config_fn", ".py"),
        ("sampling_params_fn", "..json"),
        ("sampling_params_fn", "sampling.yaml"),
        ("sampling_params_fn", "a\\b.json"),
        ("format_prompt_func", "my.prompt"),
        ("format_prompt_func", "1prompt"),
        ("extract_answer_func", "class"),
        ("read_file_func", ""),
    ],
)
def test_unsafe_names_are_refused_in_one_line(field: str, bad: str) -> None:
    with pytest.raises(SettingsError) as e:
        TaskFiles(**{field: bad})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--{field} / LLM_INFER_{field.upper()}=")
    assert "give" in msg  # how to fix
    with pytest.raises(SettingsError):  # the same from the settings resource
        TaskFiles.from_settings(Deployment.from_env(task_configs=".", output_dir=".", **{field: bad}))


def test_code_versions_hash_the_functions_used(tmp_path: Path) -> None:
    make_renamed_task(tmp_path)
    settings = Deployment.from_env(task_configs=str(tmp_path), output_dir=str(tmp_path / "out"))
    base = code_versions(load_task(tmp_path, "renamed", RENAMED), settings)[None]
    shout = code_versions(load_tasks_with(tmp_path, format_prompt_func="shout_prompt"), settings)[None]
    assert shout["raw"] == base["raw"]
    assert all(shout[a] != base[a] for a in ("prompts", "completions", "answers"))
    # A task that never used the flags keeps the versions it had before they existed (no shard goes stale).
    make_task(tmp_path, "seed")
    task = load_task(tmp_path, "seed")
    before = task_code_versions(task.module, task.folder, task.sampling_params, model_type="vllm", model_path=None)
    assert code_versions(task, settings)[None] == before


def test_max_input_length_is_part_of_the_completions_version(tmp_path: Path) -> None:
    make_task(tmp_path, "t")
    task = load_task(tmp_path, "t")
    plain = Deployment.from_env(task_configs=str(tmp_path), output_dir=str(tmp_path / "out"))
    capped = Deployment.from_env(task_configs=str(tmp_path), output_dir=str(tmp_path / "out"), max_input_length=8)
    a, b = code_versions(task, plain)[None], code_versions(task, capped)[None]
    assert a["raw"] == b["raw"] and a["prompts"] == b["prompts"]
    assert a["completions"] != b["completions"] and a["answers"] != b["answers"]


SCORER = """

def score(answer, org_data):
    return float(answer == org_data["q"])
"""


def test_score_is_optional_and_loaded_when_defined(tmp_path: Path) -> None:
    make_task(tmp_path, "seed")
    make_task(tmp_path, "scored", GOOD_TASK + SCORER)
    assert load_task(tmp_path, "seed").score is None
    score = load_task(tmp_path, "scored").score
    assert score is not None and score("q1", {"q": "q1"}) == 1.0 and score("x", {"q": "q1"}) == 0.0


@pytest.mark.parametrize(
    ("source", "msg"),
    [
        ("\nscore = 0.5\n", "score is a float, not a function"),
        ("\ndef score(answer):\n    return 1\n", "score must take exactly two arguments (answer, org_data)"),
        ("\ndef score(a, b, c):\n    return 1\n", "score must take exactly two arguments (answer, org_data)"),
    ],
)
def test_a_bad_score_is_refused_at_load_naming_the_file(tmp_path: Path, source: str, msg: str) -> None:
    make_task(tmp_path, "t", GOOD_TASK + source)
    with pytest.raises(TaskConfigError) as err:
        load_task(tmp_path, "t")
    assert str(tmp_path / "t" / "task_config.py") in str(err.value) and msg in str(err.value)
    assert "define score(answer, org_data)" in str(err.value)


def test_score_is_part_of_the_answers_version_only_and_absent_adds_nothing(tmp_path: Path) -> None:
    from llm_infer_dagster.tasks.versions import combine, function_fingerprint

    folder = make_task(tmp_path, "t")
    settings = Deployment.from_env(task_configs=str(tmp_path), output_dir=str(tmp_path / "out"))
    versions = []
    for source in (GOOD_TASK, GOOD_TASK + SCORER, GOOD_TASK + SCORER.replace("float(", "0.5 * float(")):
        (folder / "task_config.py").write_text(textwrap.dedent(source), encoding="utf-8")
        versions.append(code_versions(load_task(tmp_path, "t"), settings)[None])
    seed, scored, rescored = versions
    # Without a scorer the answers version is what it always was: completions' + extract_answer.
    (folder / "task_config.py").write_text(textwrap.dedent(GOOD_TASK), encoding="utf-8")
    task = load_task(tmp_path, "t")
    assert seed["answers"] == combine(seed["completions"], function_fingerprint(task.module, ["extract_answer"]))
    for a in ("raw", "prompts", "completions"):
        assert seed[a] == scored[a] == rescored[a]
    assert len({seed["answers"], scored["answers"], rescored["answers"]}) == 3


def test_a_scored_task_sampled_n_times_has_its_own_answers_version_and_the_same_completions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers that score every sample (pass@k) replace ones made before; completions keep their version."""
    from llm_infer_dagster.tasks import versions as versions_module

    folder = make_task(tmp_path, "t", GOOD_TASK + SCORER)
    (folder / "sampling_params.json").write_text('{"n": 4, "temperature": 0.8}', encoding="utf-8")
    settings = Deployment.from_env(task_configs=str(tmp_path), output_dir=str(tmp_path / "out"))
    before = code_versions(load_task(tmp_path, "t"), settings)[None]
    monkeypatch.setattr(versions_module, "SAMPLED_ANSWERS", "sampled-answers-next")
    after = code_versions(load_task(tmp_path, "t"), settings)[None]
    assert after["completions"] == before["completions"] and after["answers"] != before["answers"]
    (folder / "sampling_params.json").write_text('{"n": 1, "temperature": 0.8}', encoding="utf-8")
    one = code_versions(load_task(tmp_path, "t"), settings)[None]
    monkeypatch.setattr(versions_module, "SAMPLED_ANSWERS", "sampled-answers-1")
    assert code_versions(load_task(tmp_path, "t"), settings)[None] == one  # n = 1: no such part
