"""The pipeline configuration: a wrong key or value fails at load, naming the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdc_assets.config import ConfigError, load_config, parse_config
from cdc_assets.defs.cassandra.schema import captured_tables, load_registry

ROOT = Path(__file__).resolve().parents[1]


def repository_config() -> dict:
    return yaml.safe_load((ROOT / "cdc_assets.yaml").read_text())


def test_the_repository_configuration_loads_with_paths_resolved_against_its_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CDC_ASSETS_CONFIG", str(ROOT / "cdc_assets.yaml"))
    config = load_config()
    assert config.nodes[0].cdc_raw == ROOT / "var" / "cdc_raw"
    assert config.staging.path == ROOT / "var" / "staging"
    assert config.destinations.names == ("postgres", "clickhouse", "timescaledb")
    assert set(captured_tables(config, load_registry(config.schema))) == {"shop.orders", "shop.customers"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(node=[]), "node: unknown key"),
        (lambda c: c["micro_batch"].update(max_changes=0), "micro_batch.max_changes: Input should be greater than"),
        (lambda c: c["nodes"][0].pop("cdc_raw"), "nodes.0.cdc_raw: required key is missing"),
        (lambda c: c["destinations"]["postgres"].update(dsn="postgres://u:hunter2@h/db"), "postgres.dsn: unknown key"),
        (lambda c: c["destinations"]["postgres"].update(dsn_env="not a name"), "postgres.dsn_env: String should"),
        (lambda c: c["destinations"]["postgres"].update(schema_prefix="pg_x"), "reserves schema names"),
        (lambda c: c.update(destinations={}), "destinations: Value error, configure at least one"),
        (lambda c: c["schema"].update(cluster={"contact_points": ["h"]}), "schema: Value error, give exactly one"),
        (lambda c: c.update(tables=["orders"]), "tables.0: String should match pattern"),
        (lambda c: c["nodes"].append(dict(c["nodes"][0])), "node names must be unique; repeated: node1"),
        (lambda c: c["masking"]["columns"].update({"shop.orders": {"method": "drop"}}), "is not of the form"),
    ],
)
def test_a_wrong_key_or_value_names_the_key_and_what_was_expected(change, message: str) -> None:
    document = repository_config()
    change(document)
    with pytest.raises(ConfigError) as raised:
        parse_config(document, source="cdc_assets.yaml", base=ROOT)
    assert message in str(raised.value)
    assert str(raised.value).startswith("cdc_assets.yaml: ")
    assert "hunter2" not in str(raised.value)


def test_a_table_the_schema_does_not_define_is_refused_at_load() -> None:
    document = repository_config()
    document["tables"].append("shop.returns")
    config = parse_config(document, base=ROOT)
    with pytest.raises(ConfigError, match=r"tables: shop\.returns is not defined by the schema source"):
        captured_tables(config, load_registry(config.schema))


def test_a_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CDC_ASSETS_CONFIG"):
        load_config(tmp_path / "absent.yaml")
