"""docs/protocol.md stays true to the code that implements it.

- §9's endpoint table and payload table are generated from
  ``chat_contract.rpc.ALL`` and ``chat_contract.bus``: the text between the
  ``BEGIN generated`` / ``END generated`` markers must equal what this module
  renders (``.venv/bin/python tests/unit/test_contract_protocol_doc.py``
  rewrites them after a change of the contract);
- every limit of ``chat_contract.limits`` is named in the document with its
  value;
- every ``docs/protocol.md §N`` cited anywhere in the repository (code,
  READMEs, configs, the web page) names a numbered heading that exists, so a
  renumbering or a typo in a citation fails here.
"""

from __future__ import annotations

import os
import re
import sys
import types
import typing
from pathlib import Path

import msgspec

from chat_contract import bus, limits, rpc

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
# Where citations are looked for, and what is never ours to scan.
CITING_SUFFIXES = {".py", ".md", ".html", ".yml", ".yaml", ".toml", ".js", ".txt"}
SKIPPED_DIRS = {".git", ".venv", ".run", "node_modules", ".mypy_cache", ".ruff_cache",
                ".pytest_cache", "__pycache__"}
DEPLOYABLE = {"auth": "auth-service", "history": "history-service",
              "presence": "presence-service", "notify": "notify-service",
              "server": "the gateways"}

HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s+(.+?)\s*$", re.MULTILINE)
# "docs/protocol.md §3.3, §3.6 and §5", "docs/protocol.md §3.2–3.3"
CITATION = re.compile(
    r"docs/protocol\.md((?:\s*(?:,|and|&)?\s*§\s*\d+(?:\.\d+)*(?:\s*[–-]\s*\d+(?:\.\d+)*)?)+)")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)(?:\s*[–-]\s*(\d+(?:\.\d+)*))?")
TITLE_CITATION = re.compile(r'docs/protocol\.md\s+"([^"]+)"')


# --- rendering the generated parts ---------------------------------------------------


def type_name(tp: object) -> str:
    """A field type as the document shows it: ``str``, ``list[User]``, ``"a" | "b"``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(map(type_name, args))}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _field(f: msgspec.structs.FieldInfo) -> str:
    text = f"{f.encode_name}: {type_name(f.type)}"
    if f.default is not msgspec.NODEFAULT:
        text += f" = {msgspec.json.encode(f.default).decode()}"
    elif f.default_factory is not msgspec.NODEFAULT:
        text += f" = {msgspec.json.encode(f.default_factory()).decode()}"
    return "`" + text.replace("|", "\\|") + "`"  # a bare | would end the table cell


def payload_structs() -> list[type[msgspec.Struct]]:
    """Every struct ``chat_contract.bus`` defines, in the order it defines them."""
    return [obj for name, obj in vars(bus).items()
            if isinstance(obj, type) and issubclass(obj, msgspec.Struct)
            and obj.__module__ == bus.__name__ and not name.startswith("_")]


def render_payloads() -> str:
    rows = ["| struct | fields (`= default`: optional) |", "| --- | --- |"]
    for cls in payload_structs():
        config = cls.__struct_config__
        fields = [_field(f) for f in msgspec.structs.fields(cls)]
        if config.tag_field is not None:
            fields.insert(0, f'`{config.tag_field}: "{config.tag}"`')
        rows.append(f"| `{cls.__name__}` | {', '.join(fields)} |")
    return "\n".join(rows)


def render_rpc_table() -> str:
    rows = ["| subject | endpoint | request | reply | answered by |",
            "| --- | --- | --- | --- | --- |"]
    for r in rpc.ALL:
        service = rpc.service_of(r)
        rows.append(f"| `{r.subject}` | `{r.name}` | `{r.request.__name__}` | "
                    f"`{r.reply.__name__}` | {DEPLOYABLE[service]} (`{service}`) |")
    return "\n".join(rows)


GENERATED = {"rpc": render_rpc_table, "payloads": render_payloads}


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN generated: {name} (tests/unit/test_contract_protocol_doc.py) -->",
            f"<!-- END generated: {name} -->")


def generated_block(doc: str, name: str) -> str:
    begin, end = _markers(name)
    assert begin in doc and end in doc, f"docs/protocol.md lacks the {name} markers"
    return doc.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def rewrite(doc: str) -> str:
    for name, render in GENERATED.items():
        begin, end = _markers(name)
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{render()}\n{end}{tail}"
    return doc


# --- the checks ------------------------------------------------------------------------


def sections(doc: str) -> dict[str, str]:
    return {number: title for number, title in HEADING.findall(doc)}


def test_rpc_table_is_rpc_all() -> None:
    assert generated_block(DOC.read_text(), "rpc") == render_rpc_table(), (
        "docs/protocol.md §9 differs from chat_contract.rpc.ALL: run "
        "`.venv/bin/python tests/unit/test_contract_protocol_doc.py`")


def test_payload_table_is_chat_contract_bus() -> None:
    assert generated_block(DOC.read_text(), "payloads") == render_payloads(), (
        "docs/protocol.md §9 differs from chat_contract.bus: run "
        "`.venv/bin/python tests/unit/test_contract_protocol_doc.py`")


def test_every_rpc_is_in_the_document() -> None:
    # Independent of the generator: a subject with its two payload types on one line.
    lines = DOC.read_text().splitlines()
    for r in rpc.ALL:
        assert any(f"`{r.subject}`" in line and f"`{r.request.__name__}`" in line
                   and f"`{r.reply.__name__}`" in line for line in lines), r


def contract_limits() -> dict[str, int | str]:
    return {name: value for name, value in vars(limits).items()
            if name.isupper() and isinstance(value, int | str)}


def test_every_limit_is_documented_with_its_value() -> None:
    lines = DOC.read_text().splitlines()
    assert contract_limits(), "chat_contract.limits defines no limits?"
    for name, value in contract_limits().items():
        rows = [line for line in lines if f"`{name}`" in line]
        assert rows, f"limit {name} is not named in docs/protocol.md"
        assert any(str(value) in row for row in rows), (
            f"docs/protocol.md names {name} but not its value {value}")


def test_sections_one_to_eleven_exist_once() -> None:
    numbers = [number for number, _ in HEADING.findall(DOC.read_text())]
    assert len(numbers) == len(set(numbers)), "a section number is used twice"
    for n in range(1, 12):
        assert str(n) in numbers, f"§{n} is missing"


def _citing_files() -> list[Path]:
    found: list[Path] = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        found += [Path(folder, f) for f in files
                  if Path(f).suffix in CITING_SUFFIXES or f == "Makefile"]
    return found


def citations(text: str) -> list[str]:
    """Section numbers cited as ``docs/protocol.md §N`` (lists and ranges too)."""
    cited: list[str] = []
    for group in CITATION.findall(text):
        for first, last in SECTION.findall(group):
            cited += [first, last] if last else [first]
    return cited


def test_citation_parser() -> None:
    assert citations("see docs/protocol.md §3.3, §3.6, §5 and §8.") == ["3.3", "3.6", "5", "8"]
    assert citations("(docs/protocol.md §3.2–3.3)") == ["3.2", "3.3"]
    assert citations("docs/protocol.md §3.5.1 and then §9 elsewhere") == ["3.5.1"]
    assert citations("docs/protocol.md, not a section") == []


def test_every_cited_section_exists() -> None:
    known = sections(DOC.read_text())
    titles = {title.strip("`* ") for title in known.values()}
    missing: list[str] = []
    for path in _citing_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        where = path.relative_to(ROOT)
        missing += [f"{where}: §{n}" for n in citations(text) if n not in known]
        missing += [f'{where}: "{t}"' for t in TITLE_CITATION.findall(text)
                    if not any(t in title for title in titles)]
    assert not missing, f"citations of sections docs/protocol.md does not have: {missing}"


def test_design_notes_cite_existing_sections() -> None:
    # The design notes read docs/protocol.md and cite its sections as bare "§N".
    known = sections(DOC.read_text())
    notes = (ROOT / "docs" / "design-notes.md").read_text()
    cited = {first for first, _ in SECTION.findall(notes)}
    assert cited <= set(known), cited - set(known)


if __name__ == "__main__":
    DOC.write_text(rewrite(DOC.read_text()))
    print(f"rewrote the generated tables of {DOC.relative_to(ROOT)}", file=sys.stderr)
