"""Table definitions from CQL files: what CREATE/ALTER statements define, and errors that point at the line."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from cdc_assets.cassandra_schema.cql_file import load_cql_file, parse_cql
from cdc_assets.cassandra_schema.errors import SchemaError
from cdc_assets.change_batch import change_batch_schema

FIXTURES = Path(__file__).parent / "fixtures"
COMMITLOG_FIXTURES = Path("/work/shared/fixtures/commitlog")
TABLE_ID = "11111111-2222-1333-8444-555555555555"


def only_table(cql: str):
    tables = list(parse_cql(cql))
    assert len(tables) == 1
    return tables[0]


def fixture_cfid(folder: str) -> uuid.UUID:
    """The table id Cassandra's own upgrade test registers for a fixture folder (its hash.txt)."""
    for line in (COMMITLOG_FIXTURES / folder / "hash.txt").read_text().splitlines():
        if line.startswith("cfid="):
            return uuid.UUID(line.removeprefix("cfid="))
    raise AssertionError(f"no cfid in {folder}/hash.txt")


def test_standard1_fixture_loads_with_the_4_0_11_table_id_and_its_primary_key():
    registry = load_cql_file(FIXTURES / "standard1.cql")
    table = registry.get(uuid.UUID("657e5210-7cbb-11ee-9858-c9aa1eb53e69"))
    assert table is not None
    assert (table.keyspace, table.name) == ("Keyspace1", "Standard1")
    assert [(c.name, c.type.cql()) for c in table.partition_key] == [("key", "ascii")]
    assert [(c.name, c.type.cql()) for c in table.clustering] == [("col", "ascii")]
    assert [(c.name, c.type.cql()) for c in table.regulars] == [("val", "blob"), ("val0", "blob")]


@pytest.mark.parametrize(
    ("cql_file", "folder"),
    [("standard1-4.0.11.cql", "4.0.11"), ("standard1-3.0.29.cql", "3.0.29"), ("standard1-3.4.cql", "3.4-encrypted")],
)
def test_each_fixture_schema_has_the_table_id_of_its_commit_log_folder(cql_file, folder):
    (table,) = load_cql_file(FIXTURES / cql_file)
    assert table.id == fixture_cfid(folder)
    assert table.qualified_name == "Keyspace1.Standard1"


def test_unquoted_names_are_lower_cased_and_quoted_names_keep_case_and_escaped_quotes():
    table = only_table(
        f'CREATE TABLE Shop.Orders ("OrderId" int PRIMARY KEY, Total int, "say ""hi""" text) WITH ID = {TABLE_ID}'
    )
    assert (table.keyspace, table.name) == ("shop", "orders")
    assert [c.name for c in table.columns] == ["OrderId", "total", 'say "hi"']


def test_comments_of_every_style_are_ignored():
    table = only_table(
        f"""
        -- a line comment
        // another line comment
        /* a block comment
           over lines; with a semicolon */
        CREATE TABLE ks.t (k int /* inline */ PRIMARY KEY, v text) -- trailing
        WITH ID = {TABLE_ID};
        """
    )
    assert [c.name for c in table.columns] == ["k", "v"]


def test_use_sets_the_keyspace_of_unqualified_names():
    table = only_table(f"USE inventory; CREATE TABLE items (k int PRIMARY KEY) WITH ID = {TABLE_ID};")
    assert table.qualified_name == "inventory.items"


def test_an_unqualified_name_without_use_is_an_error():
    with pytest.raises(SchemaError, match="no keyspace"):
        parse_cql(f"CREATE TABLE items (k int PRIMARY KEY) WITH ID = {TABLE_ID};")


def test_compound_partition_key_clustering_positions_and_descending_order():
    table = only_table(
        f"""CREATE TABLE ks.events (tenant text, day date, at timestamp, seq int, payload blob,
                PRIMARY KEY ((tenant, day), at, seq))
            WITH CLUSTERING ORDER BY (at DESC, seq ASC) AND ID = {TABLE_ID}"""
    )
    assert [(c.name, c.position) for c in table.partition_key] == [("tenant", 0), ("day", 1)]
    assert [(c.name, c.position, c.descending) for c in table.clustering] == [("at", 0, True), ("seq", 1, False)]
    assert [c.name for c in table.regulars] == ["payload"]


def test_clustering_order_must_follow_the_clustering_columns():
    with pytest.raises(SchemaError, match="CLUSTERING ORDER BY"):
        parse_cql(
            f"CREATE TABLE ks.t (k int, a int, b int, PRIMARY KEY (k, a, b)) "
            f"WITH CLUSTERING ORDER BY (b DESC) AND ID = {TABLE_ID}"
        )


def test_static_columns_are_static_and_need_clustering_columns():
    table = only_table(f"CREATE TABLE ks.t (k int, c int, s text STATIC, PRIMARY KEY (k, c)) WITH ID = {TABLE_ID}")
    assert [c.name for c in table.statics] == ["s"]
    with pytest.raises(SchemaError, match="no clustering"):
        parse_cql(f"CREATE TABLE ks.t (k int PRIMARY KEY, s text STATIC) WITH ID = {TABLE_ID}")


def test_varchar_is_text_and_collections_are_complex_unless_frozen():
    table = only_table(
        f"""CREATE TABLE ks.t (k int PRIMARY KEY, name varchar, tags set<text>, scores frozen<map<text, int>>,
                nested list<frozen<list<int>>>, pair tuple<int, text>, embedding vector<float, 3>)
            WITH ID = {TABLE_ID}"""
    )
    by_name = {c.name: c.type for c in table.columns}
    assert by_name["name"].kind == "text"
    assert by_name["tags"].is_complex
    assert not by_name["scores"].is_complex
    assert by_name["nested"].cql() == "list<frozen<list<int>>>"
    assert by_name["pair"].cql() == "tuple<int, text>"
    assert (by_name["embedding"].kind, by_name["embedding"].size) == ("vector", 3)


def test_user_types_resolve_within_their_own_keyspace():
    registry = parse_cql(
        """
        CREATE TYPE a.address (street text, zip int);
        CREATE TYPE b.address (line1 text, line2 text, country text);
        CREATE TYPE b.person (name text, home frozen<address>);
        CREATE TABLE a.t (k int PRIMARY KEY, home frozen<address>, work address)
            WITH ID = 11111111-0000-1000-8000-000000000001;
        CREATE TABLE b.t (k int PRIMARY KEY, home frozen<b.address>, who frozen<person>)
            WITH ID = 11111111-0000-1000-8000-000000000002;
        """
    )
    a_table = registry.by_name("a", "t")
    b_table = registry.by_name("b", "t")
    assert a_table.column("home").type.field_names == ("street", "zip")
    assert a_table.column("home").type.frozen
    assert a_table.column("work").type.is_complex
    assert b_table.column("home").type.field_names == ("line1", "line2", "country")
    assert b_table.column("who").type.args[1].field_names == ("line1", "line2", "country")


def test_a_user_type_of_another_keyspace_is_an_error():
    with pytest.raises(SchemaError, match="keyspace 'a' used in keyspace 'b'"):
        parse_cql(
            "CREATE TYPE a.address (street text);\n"
            f"CREATE TABLE b.t (k int PRIMARY KEY, home frozen<a.address>) WITH ID = {TABLE_ID};"
        )


def test_alter_type_add_reaches_the_tables_using_it():
    registry = parse_cql(
        f"""CREATE TYPE ks.address (street text);
            CREATE TABLE ks.t (k int PRIMARY KEY, home frozen<address>) WITH ID = {TABLE_ID};
            ALTER TYPE ks.address ADD zip int;"""
    )
    assert registry.by_name("ks", "t").column("home").type.field_names == ("street", "zip")


def test_alter_table_add_appends_columns_including_static_ones():
    table = only_table(
        f"""CREATE TABLE ks.t (k int, c int, PRIMARY KEY (k, c)) WITH ID = {TABLE_ID};
            ALTER TABLE ks.t ADD note text;
            ALTER TABLE ks.t ADD (total bigint, owner text STATIC);"""
    )
    assert [c.name for c in table.regulars] == ["note", "total"]
    assert [c.name for c in table.statics] == ["owner"]


def test_alter_table_drop_using_timestamp_records_the_dropped_time_in_microseconds():
    table = only_table(
        f"""CREATE TABLE ks.t (k int PRIMARY KEY, old map<text, int>, kept text) WITH ID = {TABLE_ID};
            ALTER TABLE ks.t DROP old USING TIMESTAMP 1699285478684123;"""
    )
    assert table.column("old") is None
    dropped = table.dropped_column("old")
    assert dropped.dropped_at == 1699285478684123
    assert dropped.type.cql() == "map<text, int>"


def test_alter_table_drop_without_timestamp_records_the_time_it_was_read():
    before = time.time_ns() // 1000
    table = only_table(f"CREATE TABLE ks.t (k int PRIMARY KEY, v text) WITH ID = {TABLE_ID}; ALTER TABLE ks.t DROP v;")
    after = time.time_ns() // 1000
    assert before <= table.dropped_column("v").dropped_at <= after


def test_a_column_added_again_after_a_drop_is_live_and_keeps_its_drop_record():
    table = only_table(
        f"""CREATE TABLE ks.t (k int PRIMARY KEY, v text) WITH ID = {TABLE_ID};
            ALTER TABLE ks.t DROP v USING TIMESTAMP 100;
            ALTER TABLE ks.t ADD v blob;"""
    )
    assert table.column("v").type.cql() == "blob"
    assert table.dropped_column("v").dropped_at == 100


def test_dropping_a_primary_key_column_is_an_error():
    with pytest.raises(SchemaError, match="primary key"):
        parse_cql(f"CREATE TABLE ks.t (k int PRIMARY KEY, v text) WITH ID = {TABLE_ID}; ALTER TABLE ks.t DROP k;")


def test_a_table_without_an_id_is_an_error_that_says_why_the_id_is_needed():
    with pytest.raises(SchemaError, match="WITH ID") as error:
        parse_cql("CREATE TABLE ks.t (k int PRIMARY KEY)\nWITH cdc = true;", source="schema.cql")
    assert "commit log" in str(error.value)
    assert str(error.value).startswith("schema.cql:1:")


def test_errors_name_the_file_the_line_and_what_was_expected(tmp_path):
    path = tmp_path / "broken.cql"
    path.write_text(
        "/* line 1\n   line 2 */\n"
        f"CREATE TABLE ks.t (k int PRIMARY KEY) WITH ID = {TABLE_ID};\n"
        "CREATE TABLE ks.u (k int PRIMARY KEY,, v int);\n"
    )
    with pytest.raises(SchemaError) as error:
        load_cql_file(path)
    assert str(error.value).startswith(f"{path}:4: expected a column name, found ','")
    assert (error.value.source, error.value.line) == (str(path), 4)


def test_an_unknown_type_is_an_error_on_its_line():
    with pytest.raises(SchemaError, match=r"^<cql>:2: .*unknown type 'address'"):
        parse_cql(f"CREATE TABLE ks.t (k int PRIMARY KEY,\n home frozen<address>) WITH ID = {TABLE_ID};")


def test_an_unterminated_block_comment_is_an_error():
    with pytest.raises(SchemaError, match="unterminated comment"):
        parse_cql(f"CREATE TABLE ks.t (k int PRIMARY KEY) WITH ID = {TABLE_ID}; /* never closed")


def test_keyspace_options_other_table_options_and_other_statements_are_ignored():
    table = only_table(
        f"""CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {{'class': 'NetworkTopologyStrategy', 'dc1': 3}}
                AND durable_writes = true;
            CREATE TABLE ks.t (k int PRIMARY KEY, v text)
                WITH ID = {TABLE_ID} AND comment = 'it''s; tricky' AND gc_grace_seconds = 864000
                AND compaction = {{'class': 'SizeTieredCompactionStrategy', 'max_threshold': '32'}}
                AND speculative_retry = '99p' AND bloom_filter_fp_chance = 0.01;
            CREATE INDEX t_v ON ks.t (v);
            CREATE FUNCTION ks.f (x int) RETURNS NULL ON NULL INPUT RETURNS int LANGUAGE java AS $$ return x; $$;"""
    )
    assert [c.name for c in table.columns] == ["k", "v"]


def test_cdc_follows_the_table_option_and_defaults_to_on():
    statements = "CREATE TABLE ks.{} (k int PRIMARY KEY) WITH ID = {} {};"
    registry = parse_cql(
        statements.format("plain", "11111111-0000-1000-8000-000000000001", "")
        + statements.format("off", "11111111-0000-1000-8000-000000000002", "AND cdc = false")
        + statements.format("altered", "11111111-0000-1000-8000-000000000003", "AND cdc = false")
        + "ALTER TABLE ks.altered WITH cdc = true;"
    )
    assert registry.by_name("ks", "plain").cdc
    assert not registry.by_name("ks", "off").cdc
    assert registry.by_name("ks", "altered").cdc


def test_if_not_exists_keeps_the_first_definition_and_a_plain_duplicate_is_an_error():
    first = f"CREATE TABLE ks.t (k int PRIMARY KEY) WITH ID = {TABLE_ID};"
    kept = only_table(first + "CREATE TABLE IF NOT EXISTS ks.t (k text PRIMARY KEY) WITH ID = " + str(uuid.uuid1()))
    assert kept.column("k").type.cql() == "int"
    with pytest.raises(SchemaError, match="already defined"):
        parse_cql(first + first)


def test_two_tables_with_one_id_is_an_error():
    with pytest.raises(SchemaError, match=r"has the id of ks\.t"):
        parse_cql(
            f"CREATE TABLE ks.t (k int PRIMARY KEY) WITH ID = {TABLE_ID};"
            f"CREATE TABLE ks.u (k int PRIMARY KEY) WITH ID = {TABLE_ID};"
        )


def test_compact_storage_is_rejected():
    with pytest.raises(SchemaError, match="COMPACT STORAGE"):
        parse_cql(f"CREATE TABLE ks.t (k int PRIMARY KEY, v int) WITH COMPACT STORAGE AND ID = {TABLE_ID};")


def test_a_loaded_table_has_a_change_batch_schema():
    (table,) = load_cql_file(FIXTURES / "standard1.cql")
    schema = change_batch_schema(table)
    assert {"key", "col", "val", "val0"} <= set(schema.names)
    assert schema.metadata[b"cdc_assets.table_id"] == b"657e5210-7cbb-11ee-9858-c9aa1eb53e69"
