"""Safe loading: an audit of the source tree, plus the behaviour it promises.

The audit parses every Python file of the product (not the tests, which build malicious inputs on
purpose) and flags code that can run what a data file or a hub repo contains, or that exposes a
server: pickle-family loaders, ``torch.load`` without ``weights_only=True``, ``numpy.load`` with
``allow_pickle=True``, ``yaml.load`` without a safe loader, ``trust_remote_code`` set or defaulting
to True, ``eval``/``exec``, ``use_safetensors=False``, and servers bound to all interfaces. Recipes,
configs, scripts and docs are checked for ``0.0.0.0`` and ``trust_remote_code: true``.

A justified exception goes in :data:`ALLOWED` with its reason; an entry that no longer matches
anything fails the test, so the list stays true.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "tests", "runs", "__pycache__", ".cache", ".pytest_cache", ".ruff_cache",
             ".hypothesis", "test-artifacts", "build", "dist", "node_modules", ".whl", ".gl"}
TEXT_SUFFIXES = {".yaml", ".yml", ".toml", ".sh", ".md", ".cfg", ".ini"}
TEXT_NAMES = {"Makefile", "run"}

#: (path relative to the repo, rule) → why it is safe. Keep each reason specific.
ALLOWED: dict[tuple[str, str], str] = {}

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.code}"


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for an Attribute/Name chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def scan_python(source: str, path: str = "<snippet>") -> list[Finding]:
    """Unsafe-loading and exposed-server findings in one Python source."""
    tree = ast.parse(source)
    lines = source.splitlines()
    docstrings = _docstring_nodes(tree)
    found: list[Finding] = []

    def flag(node: ast.AST, rule: str) -> None:
        line = getattr(node, "lineno", 0)
        found.append(Finding(path, line, rule, lines[line - 1].strip() if 0 < line <= len(lines) else ""))

    # modules imported under another name: `import numpy as np` → np means numpy
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name] = a.name
                if a.name.split(".")[0] in PICKLE_MODULES:
                    flag(node, "pickle-import")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                flag(node, "pickle-import")
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"

    def full(name: str) -> str:
        head, _, rest = name.partition(".")
        base = alias.get(head, head)
        return f"{base}.{rest}" if rest else base

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = full(_dotted(node.func))
            short = name.rsplit(".", 1)[-1]
            if name == "torch.load" and not _is_true(_kw(node, "weights_only")):
                flag(node, "torch-load-without-weights-only")
            elif name in ("numpy.load", "torch.serialization.load") and _is_true(_kw(node, "allow_pickle")):
                flag(node, "numpy-load-allow-pickle")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _dotted(_kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else ast.Constant(None)))
                if not loader.endswith(("SafeLoader", "CSafeLoader")):
                    flag(node, "yaml-load-unsafe")
            elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
                flag(node, "yaml-load-unsafe")
            elif short in ("read_pickle",) or name.startswith(tuple(f"{m}." for m in PICKLE_MODULES)):
                flag(node, "pickle-load")
            elif name in ("eval", "exec"):
                flag(node, "eval-exec")
            if _is_true(_kw(node, "trust_remote_code")):
                flag(node, "trust-remote-code-true")
            use_st = _kw(node, "use_safetensors")
            if isinstance(use_st, ast.Constant) and use_st.value is False:
                flag(node, "safetensors-disabled")
            # (host, port) of a server or socket: "" and 0.0.0.0 mean every interface
            if (short.endswith("Server") or short == "bind") and node.args and isinstance(node.args[0], ast.Tuple):
                host = node.args[0].elts[0] if node.args[0].elts else None
                if isinstance(host, ast.Constant) and host.value in ALL_INTERFACES | {""}:
                    flag(node, "bind-all-interfaces")
            host_kw = _kw(node, "host")
            if isinstance(host_kw, ast.Constant) and host_kw.value == "":
                flag(node, "bind-all-interfaces")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value in ALL_INTERFACES or "0.0.0.0" in node.value:
                flag(node, "bind-all-interfaces")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if arg.arg == "trust_remote_code" and _is_true(default):
                    flag(node, "trust-remote-code-default-true")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id == "trust_remote_code" and node.value is not None:
                value = node.value
                if isinstance(value, ast.Call) and _dotted(value.func).endswith("Field"):
                    value = _kw(value, "default") or (value.args[0] if value.args else None)
                if _is_true(value):
                    flag(node, "trust-remote-code-default-true")
    return found


_TEXT_RULES = [
    (re.compile(r"0\.0\.0\.0"), "bind-all-interfaces"),
    (re.compile(r"trust_remote_code\s*[:=]\s*(true|True|1)\b"), "trust-remote-code-true"),
    (re.compile(r"!!python/"), "yaml-python-tag"),
]


def scan_text(text: str, path: str) -> list[Finding]:
    found = []
    for i, line in enumerate(text.splitlines(), start=1):
        for pattern, rule in _TEXT_RULES:
            if pattern.search(line):
                found.append(Finding(path, i, rule, line.strip()))
    return found


def source_files() -> list[Path]:
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        rel_root = Path(root).relative_to(REPO)
        if rel_root.parts[:2] == ("data", "demo"):  # data rows, not code
            continue
        for n in sorted(names):
            p = Path(root) / n
            if p.suffix == ".py" or p.suffix in TEXT_SUFFIXES or n in TEXT_NAMES:
                files.append(p)
    return files


def audit() -> list[Finding]:
    found = []
    for p in source_files():
        rel = str(p.relative_to(REPO))
        text = p.read_text(encoding="utf-8", errors="replace")
        found += scan_python(text, rel) if p.suffix == ".py" else scan_text(text, rel)
    return found


# --------------------------------------------------------------------------------------------------
# the audit


def test_the_source_tree_has_no_unsafe_loading_or_exposed_servers():
    files = source_files()
    assert any(p.match("curation/stage.py") for p in files) and any(p.name == "demo.yaml" for p in files)
    findings = audit()
    unexplained = [f for f in findings if (f.path, f.rule) not in ALLOWED]
    assert not unexplained, "unsafe patterns (fix them, or add to ALLOWED with a reason):\n" + "\n".join(
        map(str, unexplained))
    used = {(f.path, f.rule) for f in findings}
    stale = [k for k in ALLOWED if k not in used]
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {stale}"
    assert all(reason.strip() for reason in ALLOWED.values())


BAD_SNIPPETS = {
    "import pickle\nx = pickle.loads(b'')": {"pickle-import", "pickle-load"},
    "from joblib import load": {"pickle-import"},
    "import pandas as pd\npd.read_pickle('x')": {"pickle-load"},
    "import torch\ntorch.load('x.pt')": {"torch-load-without-weights-only"},
    "import torch\ntorch.load('x.pt', weights_only=False)": {"torch-load-without-weights-only"},
    "from torch import load\nload('x.pt')": {"torch-load-without-weights-only"},
    "import numpy as np\nnp.load('x.npy', allow_pickle=True)": {"numpy-load-allow-pickle"},
    "import yaml\nyaml.load(open('r.yaml'))": {"yaml-load-unsafe"},
    "import yaml\nyaml.load(s, Loader=yaml.Loader)": {"yaml-load-unsafe"},
    "import yaml\nyaml.unsafe_load(s)": {"yaml-load-unsafe"},
    "m = AutoModel.from_pretrained('x', trust_remote_code=True)": {"trust-remote-code-true"},
    "def load(name, trust_remote_code=True): ...": {"trust-remote-code-default-true"},
    "def load(name, *, trust_remote_code: bool = True): ...": {"trust-remote-code-default-true"},
    "class C:\n    trust_remote_code: bool = True": {"trust-remote-code-default-true"},
    "class C:\n    trust_remote_code: bool = Field(True, description='x')": {"trust-remote-code-default-true"},
    "AutoModel.from_pretrained('x', use_safetensors=False)": {"safetensors-disabled"},
    "HTTPServer(('', 8000), H)": {"bind-all-interfaces"},
    "s.bind(('0.0.0.0', 80))": {"bind-all-interfaces"},
    "uvicorn.run(app, host='0.0.0.0')": {"bind-all-interfaces"},
    "eval(user_text)": {"eval-exec"},
}


@pytest.mark.parametrize("snippet", list(BAD_SNIPPETS))
def test_the_audit_catches_each_pattern(snippet):
    assert {f.rule for f in scan_python(snippet)} == BAD_SNIPPETS[snippet]


GOOD_SNIPPETS = [
    "import torch\ntorch.load('x.pt', weights_only=True, map_location='cpu')",
    "import numpy as np\nnp.load('x.npy', allow_pickle=False)",
    "import yaml\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)",
    "def load(name, trust_remote_code=False): ...",
    "m = AutoModel.from_pretrained('x', trust_remote_code=cfg.trust_remote_code, use_safetensors=True)",
    "ThreadingHTTPServer(('127.0.0.1', port), H)",
    'def f():\n    """Never bind 0.0.0.0; we never use pickle."""',
    "model.eval()",
]


@pytest.mark.parametrize("snippet", GOOD_SNIPPETS)
def test_the_audit_passes_safe_code(snippet):
    assert scan_python(snippet) == []


def test_text_files_are_checked_too():
    assert {f.rule for f in scan_text("host: 0.0.0.0\ntrust_remote_code: true\nx: !!python/object:os.system", "r")} == {
        "bind-all-interfaces", "trust-remote-code-true", "yaml-python-tag"}


# --------------------------------------------------------------------------------------------------
# behaviour


def test_a_recipe_with_a_python_tag_is_refused_and_not_run(tmp_path):
    from curation.pipeline import ConfigError
    from flows.recipe import load_recipe

    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nsources: [a.jsonl]\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_recipe(recipe)
    assert not marker.exists()


def test_the_cli_refuses_a_python_tag_with_a_clear_error(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: x\nsources: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "sftflow"), "curate", "--recipe", str(recipe),
                           "--out", str(tmp_path / "run"), "--local"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "evil.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_set_override_with_a_python_tag_stays_a_string(tmp_path):
    from flows.recipe import parse_overrides

    marker = tmp_path / "pwned"
    value = f"!!python/object/apply:os.system ['touch {marker}']"
    assert parse_overrides([f"name={value}"]) == {"name": value}
    assert not marker.exists()


def test_recipe_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    from flows.recipe import load_recipe

    folder = tmp_path / "project" / "recipes"
    folder.mkdir(parents=True)
    recipe = folder / "r.yaml"
    recipe.write_text(
        "name: r\nsources: [../data/a.jsonl, /abs/b.jsonl, hf://owner/name]\n"
        "stages:\n  - mix: {general: [../data/general.jsonl], ratio: 0.1}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = load_recipe(Path(os.path.relpath(recipe, elsewhere)))
    data = (tmp_path / "project" / "data").resolve()
    assert r.source_paths() == [str(data / "a.jsonl"), "/abs/b.jsonl", "hf://owner/name"]
    stages = dict(r.stage_list())
    assert stages["mix"].general == [str(data / "general.jsonl")]


def test_ingest_never_unpickles_a_source(tmp_path):
    from curation.ingest import SourceError, ingest

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "rows.pkl"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SourceError, match="rows.pkl"):
        ingest([str(evil)], tmp_path / "out")
    assert not marker.exists()


def test_trust_remote_code_is_off_unless_asked():
    import inspect

    training_config = pytest.importorskip("training.config")
    models = pytest.importorskip("training.models")
    assert training_config.TrainConfig.model_fields["trust_remote_code"].default is False
    for fn in (models.load_model, models.load_tokenizer):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
