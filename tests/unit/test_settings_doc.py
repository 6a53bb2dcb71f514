"""Tests of the configuration reference: it is built from the settings the parsers
use, it is whole, and the committed docs/configuration.md is its current output."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from treescale.cli import main
from treescale.config import (
    CLUSTER_SETTINGS,
    NODE_SETTINGS,
    REQUIRED,
    TOP_FIELDS,
    ConfigError,
    Setting,
    load,
)
from treescale.ops.settings import LogSettings, NotificationSettings
from treescale.registry.settings import RegistrySettings
from treescale.settings_doc import (
    Row,
    Section,
    Undocumented,
    check_top_tables,
    dataclass_rows,
    reference,
    render,
    sections,
    type_name,
    value_text,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"

NODES = """
[[node]]
name = "edge"
id = 1
bus = "127.0.0.1:7100"
roles = ["registry"]
http = "tcp:5000:interface=127.0.0.1"

[[node]]
name = "r1"
id = 2
bus = "127.0.0.1:7101"
parent = "edge"

[[node]]
name = "r2"
id = 3
bus = "127.0.0.1:7102"
parent = "edge"

[[node]]
name = "r3"
id = 4
bus = "127.0.0.1:7103"
parent = "edge"
"""


def test_committed_reference_is_the_generated_one() -> None:
    """docs/configuration.md is exactly what the code generates: a setting changed
    without regenerating the file fails here."""
    assert DOCS.read_text(encoding="utf-8") == reference(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/treescale config-reference > docs/configuration.md`"
    )


def test_config_reference_command_prints_the_reference(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``treescale config-reference`` prints the generated Markdown, exit 0."""
    assert main(["config-reference"]) == 0

    assert capsys.readouterr().out == reference()


def test_every_top_level_table_has_a_section() -> None:
    """Each table the topology parser accepts is documented by some section."""
    assert set(TOP_FIELDS) <= {section.top for section in sections()}


def test_a_new_top_level_table_without_a_section_is_refused() -> None:
    """A table the parser accepts but no section shows stops the reference."""
    with pytest.raises(Undocumented, match=r"\[quotas\]"):
        check_top_tables(sections(), TOP_FIELDS | {"quotas"})


def test_every_row_has_a_sentence_and_a_type() -> None:
    """No row of the reference is left without its meaning or its type."""
    rows = [row for section in sections() for row in section.rows]

    assert rows
    assert all(row.doc.strip() and row.type for row in rows)


def test_a_field_without_a_doc_is_refused() -> None:
    """A settings field added without its sentence cannot reach the reference."""

    @dataclass(frozen=True)
    class Settings:
        documented: int = dataclasses.field(default=1, metadata={"doc": "a number"})
        forgotten: int = 2

    with pytest.raises(Undocumented, match=r"Settings\.forgotten has no doc"):
        dataclass_rows(Settings)


def test_a_key_the_parser_knows_but_no_row_shows_is_refused() -> None:
    """A key a parser accepts must be a row: one missing is an error, not a gap."""
    keys = {spec.name for spec in dataclasses.fields(RegistrySettings)}

    with pytest.raises(Undocumented, match="extra"):
        dataclass_rows(RegistrySettings, keys | {"extra"})


def test_rows_use_the_key_of_the_file_not_the_field_name() -> None:
    """Fields stored under another name show the key an operator writes."""
    keys = {
        row.key
        for section in sections()
        if section.top == "auth"
        for row in section.rows
    }

    assert {"rule", "trusted_issuer"} <= keys
    assert not {"rules", "trusted_issuers"} & keys


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cluster_and_node_defaults_are_what_the_parser_applies(tmp_path: Path) -> None:
    """A file that sets no [cluster] field and few node fields gets the defaults
    of the settings table, so the reference's defaults are the real ones."""
    topology = load(write(tmp_path, NODES))

    defaults = {setting.name: setting.default for setting in CLUSTER_SETTINGS}
    assert topology.cluster == defaults["name"]
    assert topology.data_dir == Path(defaults["data_dir"])
    for name in ("chunk_size", "replicas", "record_replicas", "window"):
        assert getattr(topology, name) == defaults[name]
    assert topology.buffer_chunks == defaults["buffer_chunks"]
    assert topology.insecure_plain_bus is defaults["insecure_plain_bus"]
    node_defaults = {setting.name: setting.default for setting in NODE_SETTINGS}
    relay = topology.node("r1")
    assert relay.roles == frozenset(node_defaults["roles"])
    assert relay.weight == node_defaults["weight"]
    assert relay.domain == "r1"
    assert topology.node("edge").parent is node_defaults["parent"]


@pytest.mark.parametrize(
    "setting",
    [setting for setting in CLUSTER_SETTINGS if setting.bounds is not None],
    ids=lambda setting: setting.name,
)
def test_cluster_bounds_are_what_the_parser_enforces(
    tmp_path: Path, setting: Setting
) -> None:
    """One past either bound of a [cluster] number is refused with those bounds."""
    assert setting.bounds is not None
    low, high = setting.bounds
    for value in (low - 1, high + 1):
        path = write(tmp_path, f"[cluster]\n{setting.name} = {value}\n" + NODES)

        with pytest.raises(ConfigError) as caught:
            load(path)

        assert caught.value.field == f"cluster.{setting.name}"
        assert f"{value} is not in {low}..{high}" in str(caught.value)


def test_node_id_bounds_are_what_the_parser_enforces(tmp_path: Path) -> None:
    """A node id past the table's upper bound is refused with those bounds."""
    (setting,) = [setting for setting in NODE_SETTINGS if setting.name == "id"]
    assert setting.bounds is not None and setting.default is REQUIRED
    high = setting.bounds[1]

    with pytest.raises(ConfigError, match=f"{high + 1} is not in 1..{high}"):
        load(write(tmp_path, NODES.replace("id = 4", f"id = {high + 1}")))


def documented_defaults(section: Section) -> list[str]:
    """``key = value`` for every row whose default is a literal TOML value."""
    lines = []
    for row in section.rows:
        if row.default.startswith("`") and row.default.endswith("`"):
            lines.append(f"{row.key} = {row.default.strip('`')}")
    return lines


@pytest.mark.parametrize(
    "top", ["cluster", "registry", "auth", "notifications", "log", "scrub"]
)
def test_every_documented_default_is_accepted_as_written(
    tmp_path: Path, top: str
) -> None:
    """Writing each documented key with its documented default gives a file the
    parser takes: the reference names real keys, with values of the right type."""
    (section,) = [section for section in sections() if section.top == top]
    lines = documented_defaults(section)
    assert lines

    topology = load(write(tmp_path, f"[{top}]\n" + "\n".join(lines) + "\n" + NODES))

    expected = {
        "registry": RegistrySettings(),
        "notifications": NotificationSettings(),
        "log": LogSettings(),
    }
    if top in expected:
        assert getattr(topology, top) == expected[top]


def test_type_names_are_what_an_author_writes() -> None:
    """Python types read as TOML types; an unknown one asks for a 'type'."""
    assert type_name(int) == "integer"
    assert type_name(float) == "number"
    assert type_name(bool) == "boolean"
    assert type_name(Path | None) == "path"
    assert type_name(frozenset[str]) == "list of strings"
    assert type_name(tuple[str, ...]) == "list of strings"
    with pytest.raises(Undocumented, match="give it a 'type'"):
        type_name(dict[str, int], "X.y")


def test_defaults_are_written_as_toml() -> None:
    """Defaults show as TOML values; no default shows as none."""
    assert value_text(True) == "`true`"
    assert value_text(4194304) == "`4194304`"
    assert value_text(1.0) == "`1.0`"
    assert value_text('say "hi"') == '`"say \\"hi\\""`'
    assert value_text(Path("token-key.pem")) == '`"token-key.pem"`'
    assert value_text(frozenset({"b", "a"})) == '`["a", "b"]`'
    assert value_text({}) == "`{}`"
    assert value_text(None) == "none"


def test_cells_cannot_break_the_table_or_turn_into_markup() -> None:
    """A pipe, an asterisk or an angle bracket in a sentence stays text."""
    section = Section(
        "[x]", "x", "About.", (Row("k", "string", "none", "", "a|b *c* <d>"),)
    )

    table_row = render([section]).splitlines()[-1]

    assert table_row == "| `k` | string | none |  | a\\|b \\*c\\* &lt;d&gt; |"
