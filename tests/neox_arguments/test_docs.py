"""configs/neox_arguments.md is current, and every config field has a docstring."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

from megatron.neox_arguments import NeoXArgs

ROOT = Path(__file__).resolve().parents[2]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)
    spec.loader.exec_module(module)
    return module


def test_every_field_has_a_docstring():
    gen = _gen_docs()
    documented = {f.name: f.doc for g in gen.read_groups() for f in g.fields}
    fields = {f.name for f in dataclasses.fields(NeoXArgs)}
    assert set(documented) == fields  # the group files are exactly NeoXArgs' fields
    missing = sorted(name for name, doc in documented.items() if not doc)
    assert missing == [], f"fields without a docstring: {missing}"


def test_no_field_declared_in_two_groups():
    gen = _gen_docs()
    names = [f.name for g in gen.read_groups() for f in g.fields]
    assert len(names) == len(set(names))


def test_rendered_document_is_current():
    gen = _gen_docs()
    expected = gen.render(gen.read_groups())
    current = (ROOT / "configs" / "neox_arguments.md").read_text(encoding="utf-8")
    assert current == expected, "configs/neox_arguments.md is stale: run tools/gen_docs.py"


def test_render_shows_name_type_default_and_doc(tmp_path):
    gen = _gen_docs()
    (tmp_path / "g.py").write_text(
        'from dataclasses import dataclass, field\n\n'
        '@dataclass\nclass G:\n    """Group doc."""\n\n'
        '    a: int | None = None\n    """Doc of a."""\n\n'
        '    b: bool = field(default=True, metadata={})\n\n'
        '    c: str = "x"\n    """Doc of c."""\n')
    (group,) = [g for g in _read_one(gen, tmp_path / "g.py")]
    assert [(f.name, f.annotation, f.default, f.doc) for f in group.fields] == [
        ("a", "int | None", "None", "Doc of a."), ("b", "bool", "True", None),
        ("c", "str", "'x'", "Doc of c.")]
    text = gen.render([group])
    assert "## G\n\nGroup doc.\n" in text
    assert "- **a**: `int | None` = `None`\n\n    Doc of a.\n" in text
    assert "(undocumented)" in text


def _read_one(gen, path: Path):
    import ast

    tree = ast.parse(path.read_text())
    return [gen.GroupDoc(n.name, ast.get_docstring(n) or "", gen._field_docs(n.body))
            for n in tree.body if isinstance(n, ast.ClassDef)]


def test_check_mode_detects_stale_file(tmp_path, monkeypatch):
    gen = _gen_docs()
    monkeypatch.setattr(gen, "OUTPUT", tmp_path / "neox_arguments.md")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
