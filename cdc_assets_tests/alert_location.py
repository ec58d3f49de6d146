"""The code location the alert daemon test runs: the pipeline's assets and checks with the alert sensor only.

The test drives its runs itself; with the node sensors (or the health sensor) here the daemon would start runs
and report evaluations of its own, and the alerts the test counts would depend on timing.
"""

import dagster as dg

from cdc_assets.config import PipelineConfig, load_config
from cdc_assets.definitions import build_definitions
from cdc_assets.defs.alerts import alert_definitions
from cdc_assets.defs.cassandra.schema import captured_tables, load_registry
from cdc_assets.defs.checks.health import health_definitions


def alerting_only(config: PipelineConfig) -> dg.Definitions:
    pipeline = build_definitions(config)
    tables = captured_tables(config, load_registry(config.schema))
    return dg.Definitions(
        assets=pipeline.assets,
        asset_checks=health_definitions(config, tables).asset_checks,
        resources=pipeline.resources,
        executor=pipeline.executor,
        sensors=alert_definitions(config).sensors,
    )


defs = alerting_only(load_config())
