"""Project files around the code: the pull-request workflow and the README's param table."""

import ast
import difflib
import importlib
import io
import re
import shutil
import subprocess
import tokenize

import yaml

from tests.conftest import PROJECT

WORKFLOW = PROJECT / ".github" / "workflows" / "metrics.yml"


def lint_workflow(path) -> subprocess.CompletedProcess:
    command = ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def test_pull_request_workflow_lints_clean_and_its_scripts_parse():
    result = lint_workflow(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["report"]["steps"]
    scripts = [step["run"] for step in steps if "run" in step]
    for script in scripts:
        syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert syntax.returncode == 0, f"{script}\n{syntax.stderr}"
    assert any("caption-diff origin/main" in script for script in scripts)  # the README's local command
    assert any("gh pr comment" in script for script in scripts)


def test_the_workflow_lint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    shutil.copy(WORKFLOW, broken)
    broken.write_text(broken.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest"))
    assert lint_workflow(broken).returncode != 0


def flatten(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys += flatten(value, f"{name}.") if isinstance(value, dict) and value else [name]  # {}: a param
    return keys


def test_the_readme_stays_a_short_reference_with_working_links():
    readme = (PROJECT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\((docs/[\w.]+\.md)", readme):
        assert (PROJECT / target).exists(), target
    assert "python3 -m pytest -q" in readme  # the test command CI runs (.ci/run)


def captioner_imports(script) -> set[str]:
    """Files of the captioner modules a script imports anywhere in it (``from captioner import <module>``,
    ``from captioner.<module> import …``)."""
    files = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("captioner"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                path = name.replace(".", "/")
                if (PROJECT / f"{path}.py").exists():
                    files.add(f"{path}.py")
                elif (PROJECT / path / "__init__.py").exists():
                    files.add(f"{path}/__init__.py")
    return files  # a name defined in a module (captioner.CaptionerError) adds that module, found above


# What never changes what a stage computes: the error type, params and layout, the param rules, the checks of
# artifacts read back (they only refuse), atomic writes and strict text reading.
NOT_RESULTS = {
    "captioner/__init__.py",
    "captioner/stage.py",
    "captioner/params.py",
    "captioner/artifacts.py",
    "captioner/layout.py",
    "captioner/files.py",
    # the subpackages' docstrings
    "captioner/evaluation/__init__.py",
    "captioner/features/__init__.py",
    "captioner/model/__init__.py",
    "captioner/training/__init__.py",
}


def import_closure(scripts, leaves: set[str]) -> set[str]:
    """The captioner files ``scripts`` import, their imports, and so on; the imports of ``leaves`` not followed."""
    seen, todo = set(), list(scripts)
    while todo:
        for path in captioner_imports(todo.pop()) - seen:
            seen.add(path)
            if path not in leaves:
                todo.append(PROJECT / path)
    return seen


def code_run_by(script) -> set[str]:
    """The captioner files a stage script runs (the stage runner's and the Python API's imports are not its code)."""
    return import_closure([script], NOT_RESULTS) - NOT_RESULTS


def test_every_stage_lists_the_library_modules_it_imports_as_deps_and_none_it_never_runs():
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # a foreach stage: its template
        script = PROJECT / stage["cmd"].split()[1]
        imported, runs = captioner_imports(script) - NOT_RESULTS, code_run_by(script)
        listed = {dep for dep in stage["deps"] if dep.startswith("captioner/")}
        assert imported, name
        assert imported <= listed, f"{name} does not list {sorted(imported - listed)}"
        assert listed <= runs, f"{name} lists {sorted(listed - runs)}, which it never runs"
        assert runs <= listed, f"{name} runs {sorted(runs - listed)}, which it does not list"
    # Evaluation needs batching and the loss, not the trainer: a change to training reruns train only.
    assert not {"captioner/training/train.py", "captioner/training/finetuning.py"} & code_run_by(
        PROJECT / "stages" / "evaluate.py"
    )


def changed(value):
    """Another value of the same type and length as ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("x" if value[-1] != "x" else "y")
    return "x" if value is None else ["x"] if value == [] else []


def test_a_set_param_changes_its_own_line_of_params_yaml_alone(tmp_path):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` does to params.yaml

    original = (PROJECT / "params.yaml").read_text()
    params = yaml.safe_load(original)
    for name in flatten(params):
        value = params
        for part in name.split("."):
            value = value[part]
        if isinstance(value, dict):  # ensemble: {}, set with +ensemble.<name>=…
            continue
        copy = tmp_path / "params.yaml"
        copy.write_text(original)
        new = changed(value)
        apply_overrides(str(copy), [f"{name}={yaml.safe_dump(new, default_flow_style=True).splitlines()[0]}"])
        before, after = original.splitlines(), copy.read_text().splitlines()
        edits = [op for op in difflib.SequenceMatcher(None, before, after).get_opcodes() if op[0] != "equal"]
        # One line replaced: by one line, or by the lines of a list (`image_urls: []` → `image_urls:` and `- x`).
        shown = [(before[a:b], after[c:d]) for _, a, b, c, d in edits]
        assert len(edits) == 1 and edits[0][2] - edits[0][1] == 1, f"-S {name} changed {shown}"
        value = yaml.safe_load(copy.read_text())
        for part in name.split("."):
            value = value[part]
        assert value == new, name


def library_imports() -> dict[str, set[str]]:
    """Each captioner module → the captioner modules it imports anywhere in it, but for type checking only."""
    graph = {}
    for path in sorted((PROJECT / "captioner").rglob("*.py")):
        module = ".".join(path.relative_to(PROJECT).with_suffix("").parts).removesuffix(".__init__")
        tree, imported = ast.parse(path.read_text()), set()
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, ast.ImportFrom | ast.Import):
                continue
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom):
                names += [f"{node.module}.{alias.name}" for alias in node.names]
            imported |= {name for name in names if name.startswith("captioner")}
        graph[module] = imported
    return {module: {name for name in names if name in graph and name != module} for module, names in graph.items()}


def test_the_library_has_no_import_cycle():
    graph = library_imports()
    assert {"captioner.model.checkpoint", "captioner.model.decoder"} <= graph[
        "captioner.model.ensemble"
    ]  # the graph is read
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " → ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module] - {"captioner"}):  # the package itself: its __init__ imports no module
            visit(imported)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_no_function_is_longer_than_50_lines_and_no_layout_is_kept_from_the_formatter_without_a_reason():
    for path in sorted([*(PROJECT / "captioner").rglob("*.py"), *(PROJECT / "stages").glob("*.py")]):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 50, f"{path.relative_to(PROJECT)}: {node.name} is {length} lines"
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if "# fmt: skip" in line:  # the reason in a comment line above the statement it keeps
                before = "\n".join(lines[max(0, number - 12) : number])
                assert "fmt: skip)" in before, f"{path.relative_to(PROJECT)}:{number + 1}: # fmt: skip without a why"


# How the people who build it talk about their work, not what a user needs: no user doc uses these words.
WORKSHOP_WORDS = (
    r"\bissue[- ]#?\d+|\blevers?\b|\bbudget\b|stop rule|scratch (patch|script|clone|copy)|\bgoals?\b|\bnot met\b"
)


def test_the_user_docs_speak_to_users():
    for path in [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md")), PROJECT / "CHANGELOG.md"]:
        found = [m.group(0) for m in re.finditer(WORKSHOP_WORDS, path.read_text(), re.IGNORECASE)]
        assert not found, f"{path.relative_to(PROJECT)}: {found}"
    config = (PROJECT / ".dvc" / "config").read_text()
    for section in re.findall(r'docs/(\w+)\.md, "([^"]+)"', config):  # a pointer to a section resolves
        assert f"## {section[1]}" in (PROJECT / "docs" / f"{section[0]}.md").read_text()
    assert re.findall(r'docs/(\w+)\.md, "([^"]+)"', config)


def test_each_stage_depends_on_the_outputs_it_reads_so_a_new_model_reruns_evaluate_and_export():
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]

    def data(stage: str) -> set[str]:
        definition = stages[stage].get("do", stages[stage])
        return {dep for dep in definition["deps"] if not dep.startswith(("captioner/", "stages/"))}

    features, captions = "data/features/${encoder}.h5", {f"data/captions/{split}.tsv" for split in ("train", "dev")}
    assert data("extract_features") == data("clean_captions") == {"data/raw"}
    assert data("build_vocab") == {"data/captions/train.tsv"}
    assert data("train") == data("train_member") == {features, "data/vocab.json", "data/raw", *captions}
    tested = {"data/captions/train.tsv", "data/captions/test.tsv"}
    assert data("evaluate") == {"models", "ensemble", features, "data/vocab.json", "data/raw", *tested}
    assert data("export") == {"models", "ensemble"}


DOTTED = re.compile(r"(?<![\w/.-])captioner(?:\.[A-Za-z_]\w*)+")
FILE_NAMES = {"captioner.keras", "captioner.json", "captioner.tflite"}  # the model's files, named after the package


def prose(path) -> str:
    """What a file says to its reader: a Python file's comments and strings, a Markdown or YAML file whole."""
    if path.suffix != ".py":
        return path.read_text()
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return "\n".join(token.string for token in tokens if token.type in (tokenize.COMMENT, tokenize.STRING))


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package or something defined in one."""
    parts = dotted.split(".")
    if len(parts) == 2 and hasattr(importlib.import_module("captioner.captioning").Captioner, parts[1]):
        return True  # the examples' name for a Captioner: captioner.caption(…)
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for part in parts[end:]:
            fields = getattr(found, "__dataclass_fields__", {})
            if part in fields and not hasattr(found, part):
                return True  # a dataclass field without a class-level default
            if not hasattr(found, part):
                return False
            found = getattr(found, part)
        return True
    return False


def test_every_dotted_name_in_docs_comments_and_docstrings_exists():
    places = [PROJECT / "README.md", PROJECT / "dvc.yaml", *(PROJECT / "docs").glob("*.md")]
    for folder in ("captioner", "stages", "tests", "bench"):
        places += sorted((PROJECT / folder).rglob("*.py"))
    stale = {
        f"{path.relative_to(PROJECT)}: {name.rstrip('.')}"
        for path in places
        for name in DOTTED.findall(prose(path))
        if name.rstrip(".") not in FILE_NAMES and not resolves(name.rstrip("."))
    }
    assert not stale, sorted(stale)


def test_no_library_function_takes_more_than_seven_parameters_or_runs_past_fifty_lines():
    too_big = []
    for path in sorted((PROJECT / "captioner").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                names = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                count = len(names) + bool(arguments.vararg) + bool(arguments.kwarg)
                count -= bool(names) and names[0].arg in ("self", "cls")
                lines = node.end_lineno - node.lineno + 1
                if count > 7 or lines > 50:
                    too_big.append(
                        f"{path.relative_to(PROJECT)}:{node.lineno} {node.name}: {count} params, {lines} lines"
                    )
    assert not too_big, too_big
    assert len(list((PROJECT / "captioner").glob("*.py"))) <= 15  # the rest lives in the subpackages


def test_the_model_code_imports_no_pipeline_plumbing():
    """The modules that define specs, layers and decoding, and all they import, read no YAML, no command line and
    no stage runner: a notebook can build and decode a model without a project."""
    # captioner/__init__.py's imports are the Python API's, made when it is used
    seen = import_closure(
        [PROJECT / "captioner" / "model" / f"{name}.py" for name in MODEL_CODE], {"captioner/__init__.py"}
    )
    assert "captioner/stage.py" not in seen and "captioner/model/spec.py" in seen
    for path in seen:
        tree = ast.parse((PROJECT / path).read_text())
        top = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
        top += [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module]
        assert not {"yaml", "ruamel.yaml", "argparse"} & set(top), path
        assert "sys.argv" not in (PROJECT / path).read_text(), path


MODEL_CODE = ("spec", "decoder", "transformer", "decoding")
