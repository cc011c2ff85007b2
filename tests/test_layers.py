"""The packages are layers, and imports flow one way (docs/design.md, "The map"): a module may
import its own package and the layers below it, never one above. Every import counts, those
inside functions too. No torch here: this reads source files."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "voxcli"

# Lowest first. The core modules sit directly in voxcli/.
LAYERS = ["core", "audio", "engine", "output", "live", "dictate", "measure", "serve", "cli"]
TESTING = "testing"  # test models: may use the layers up to engine; nothing in voxcli imports them


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "core"


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("voxcli")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("voxcli"):
            if node.module == "voxcli":  # from voxcli import X: X may be a package
                found += [(node.lineno, f"voxcli.{alias.name}") for alias in node.names
                          if (PACKAGE / alias.name).is_dir()]
            else:
                found.append((node.lineno, node.module))
    return found


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(p for p in rel.parts if p != "__init__"), path))
    return out


def violations() -> list[str]:
    bad = []
    for module, path in modules():
        if module == "voxcli.__main__":
            continue  # the entry point runs the CLI
        mine = layer_of(module)
        for line, target in imports(path):
            theirs = layer_of(target)
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if theirs == TESTING and mine != TESTING:
                bad.append(f"{where} (test models are not part of the tool)")
            elif mine == TESTING:
                if theirs != TESTING and LAYERS.index(theirs) > LAYERS.index("engine"):
                    bad.append(f"{where} (test models sit beside the engine)")
            elif theirs != TESTING and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{where} ({mine} is below {theirs})")
    return bad


def test_imports_flow_one_way():
    assert violations() == []


def test_the_check_sees_a_wrong_import(tmp_path, monkeypatch):
    """The check itself can fail: an engine module that imports the CLI is caught."""
    fake = tmp_path / "voxcli"
    for name in LAYERS[1:] + [TESTING]:
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text("")
    (fake / "engine" / "bad.py").write_text("def f():\n    from voxcli.cli.app import main\n")
    (fake / "live" / "good.py").write_text("from voxcli.engine import load_engine\nfrom voxcli import errors\n")
    (fake / "cli" / "bad.py").write_text("from voxcli.testing import tiny\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert violations() == [
        "voxcli/cli/bad.py:1 imports voxcli.testing (test models are not part of the tool)",
        "voxcli/engine/bad.py:2 imports voxcli.cli.app (engine is below cli)",
    ]


def test_every_package_says_what_it_exports():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init} has no docstring saying its layer"
        names = [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(t, ast.Name)]
        assert "__all__" in names, f"{init} has no __all__"


def test_no_function_over_80_lines_and_no_class_over_200():
    """Units small enough to read in one sitting (lines from ``def``/``class`` to the last line of
    its body, docstrings and comments included), in voxcli/ and in bench/."""
    over = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "bench").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = {ast.FunctionDef: 80, ast.AsyncFunctionDef: 80, ast.ClassDef: 200}.get(type(node))
            if limit and node.end_lineno - node.lineno + 1 > limit:
                over.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: "
                            f"{node.end_lineno - node.lineno + 1} lines (at most {limit})")
    assert over == []


# Reaching into a third-party object where its library offers no public way, each with why.
PRIVATE_ALLOWED = {
    ("voxcli/output/recorder.py", "self.file._file"),  # soundfile has no public handle for sf_command (RF64 header)
    # silero-vad's wrapper keeps one stream's state in itself; its 16 kHz network, which takes the
    # state as an argument (a batch of streams, a row each), is public in TorchScript but not named
    ("voxcli/audio/vad.py", "_loaded()._model"),
    # pynput's X11 listener never stops once it saw a key (its stop request is never flushed): the
    # same request for its recording context, which it does not expose, from our own connection
    ("voxcli/dictate/hotkey.py", "listener._context"),
}


def private_reads(roots: list[Path], top: Path) -> list[str]:
    """Every ``x._name`` in ``roots`` where ``x`` is not ``self``/``cls`` nor a module imported from
    outside voxcli (``torch._dynamo`` is torch's own business): one object reading another's
    privates."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text())
            outside = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
                       if isinstance(node, ast.Import) for a in node.names}
            outside |= {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and not (node.module or "").startswith("voxcli") for a in node.names}
            rel = path.relative_to(top).as_posix()
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                        and not node.attr.startswith("__")):
                    continue
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if isinstance(base, ast.Name) and base.id in outside:
                    continue
                if (rel, ast.unparse(node)) not in PRIVATE_ALLOWED:
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_module_reads_another_objects_private_attributes():
    """A session's privates are the session's: the engine, the driver, serve and bench go through
    public methods (``next_work()``, ``cache_state()``, ...)."""
    top = PACKAGE.parent
    assert private_reads([PACKAGE, top / "bench"], top) == []


def test_the_private_check_sees_a_planted_read(tmp_path):
    pkg = tmp_path / "voxcli"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import torch\n\ndef f(session):\n    torch._dynamo.reset()\n"
                                "    return session._state, self._mine\n")
    assert private_reads([pkg], tmp_path) == ["voxcli/bad.py:5 session._state"]


def test_no_file_in_voxcli_over_450_lines():
    over = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 450]
    assert over == []


def server_knowledge(root: Path) -> list[str]:
    """Outside the engine layer: a ``ServerError`` named, or ``model.server`` read: code that asks
    whether a server is behind the engine instead of what the engine can do (``info``)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel.startswith("voxcli/engine/") or rel in ("voxcli/errors.py", "voxcli/config.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "ServerError" or \
                    isinstance(node, ast.alias) and node.name == "ServerError":
                found.append(f"{rel}:{getattr(node, 'lineno', '?')} ServerError")
            elif isinstance(node, ast.Attribute) and node.attr == "server" and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "model":
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return found


def test_nothing_outside_the_engine_asks_whether_a_server_is_behind_it():
    assert server_knowledge(PACKAGE) == []


def test_the_server_check_sees_a_planted_branch(tmp_path):
    (tmp_path / "voxcli" / "live").mkdir(parents=True)
    (tmp_path / "voxcli" / "live" / "bad.py").write_text(
        "from voxcli.errors import ServerError\n\ndef f(cfg):\n    return cfg.model.server\n")
    assert server_knowledge(tmp_path / "voxcli") == ["voxcli/live/bad.py:1 ServerError", "voxcli/live/bad.py:4 cfg.model.server"]
