"""Great Expectations 1.x suites over the changes staged in one window: a default suite per table, plus the user's.

A window's changes of one table become one pandas DataFrame, a row per change:

==========================  ====================================================================================
column                      holds
==========================  ====================================================================================
``_cdc_node``               the node whose stream the change was read from
``_cdc_segment_id``         the commit log segment, and ``_cdc_position`` the position in it (where to look)
``_cdc_kind``               ``row``, ``static_row``, ``partition_deletion`` or ``range_deletion``
``_cdc_writetime``          the change's write time in µs (the newest timestamp it carries)
<key columns>               the partition key and clustering columns, named as in Cassandra
<simple columns>            each static or regular column of a frozen or scalar type: the ``value`` of its cell,
                            named as in Cassandra; null when the change does not set it (or deletes it)
==========================  ====================================================================================

so that ``expect_column_values_to_be_between(column="quantity", min_value=0)`` reads as it would on the table.
Integers and booleans keep their type (pandas' nullable dtypes), timestamps are UTC datetimes, and decimal and
varint values (exact decimal text in a change batch) become floats. Non-frozen collections, UDTs and counters are
left out: their cells are not values of the column (a counter's cell holds a leader's shard, not the counter).

The default suite (:func:`default_expectations`) says what every change batch must be: keys present (clustering
for row changes), one of the four change kinds, positions that exist, a write time, and text in the forms the
change batch contract promises (canonical UUIDs, ASCII for ``ascii``). The user's expectations come from
``checks.expectations`` in the configuration, by ``keyspace.table``; their names and columns are checked when
the configuration is loaded (:func:`check_configured`), their arguments when the suite is built.

Each expectation keeps Great Expectations' own ``severity`` (``critical`` by default, or ``warning`` / ``info``
in its kwargs): whoever writes an expectation knows what its failure means.

Nothing here imports Great Expectations or pandas until a window is validated: GE's import alone costs ~3.5 s,
which neither the code location's load nor a micro-batch may pay.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.config import ConfigError, Expectation
from cdc_assets.staging import write_times

if TYPE_CHECKING:
    import pandas as pd

NODE = "_cdc_node"
WRITETIME = "_cdc_writetime"
#: The frame's columns that every table has, before its own.
FIXED_COLUMNS = (NODE, cb.SEGMENT_ID, cb.POSITION, cb.KIND, WRITETIME)

CRITICAL = "critical"
UUID_REGEX = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
ASCII_REGEX = r"^[\x00-\x7f]*$"
#: How many unexpected values and places an outcome lists.
MAX_SHOWN = 5

# The kwargs naming the frame columns an expectation reads.
_COLUMN_KWARGS = ("column", "column_A", "column_B")
_COLUMN_LIST_KWARGS = ("column_list",)
_DECIMAL_TYPES = (b"decimal", b"varint")


class ExpectationConfigError(ConfigError):
    """A configured expectation that cannot be used; the message names the table and the expectation."""


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict on a window."""

    expectation: str
    column: str
    passed: bool
    #: What was observed: the value of an aggregate, or how many changes were unexpected and some of them.
    observed: str
    #: Where the first unexpected changes are: ``node segment:position``.
    where: list[str] = field(default_factory=list)
    severity: str = CRITICAL
    #: From ``checks.expectations`` (else from the default suite).
    configured: bool = False


@dataclass(frozen=True)
class SuiteResult:
    """A table's suite run over one window's changes."""

    table: str
    changes: int
    outcomes: list[ExpectationOutcome]

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.passed]

    @property
    def critical(self) -> bool:
        """Whether an expectation of severity ``critical`` failed."""
        return any(outcome.severity == CRITICAL for outcome in self.failed)


# --------------------------------------------------------------------------------------------------
# Suites


def frame_columns(table: TableSchema) -> list[str]:
    """The columns of ``table``'s window frame (module docstring), in order."""
    simple = [c.name for c in table.statics + table.regulars if not c.type.is_complex and c.type.kind != "counter"]
    return [*FIXED_COLUMNS, *(c.name for c in table.partition_key + table.clustering), *simple]


def default_expectations(table: TableSchema) -> list[Expectation]:
    """What every change of ``table`` must satisfy, whatever the user configured."""
    row_changes = {"type": "comparison", "column": {"name": cb.KIND}, "operator": "==", "parameter": cb.KIND_ROW}
    suite = [
        Expectation(
            expectation="expect_column_values_to_be_in_set", kwargs={"column": cb.KIND, "value_set": list(cb.KINDS)}
        ),
        Expectation(expectation="expect_column_values_to_be_between", kwargs={"column": cb.SEGMENT_ID, "min_value": 0}),
        Expectation(expectation="expect_column_values_to_be_between", kwargs={"column": cb.POSITION, "min_value": 0}),
        Expectation(expectation="expect_column_values_to_not_be_null", kwargs={"column": WRITETIME}),
    ]
    suite += [
        Expectation(expectation="expect_column_values_to_not_be_null", kwargs={"column": c.name})
        for c in table.partition_key
    ]
    suite += [
        Expectation(
            expectation="expect_column_values_to_not_be_null", kwargs={"column": c.name, "row_condition": row_changes}
        )
        for c in table.clustering
    ]
    valued = table.partition_key + table.clustering + table.statics + table.regulars
    for column in valued:
        if column.type.kind in ("uuid", "timeuuid"):
            regex = UUID_REGEX
        elif column.type.kind == "ascii":
            regex = ASCII_REGEX
        else:
            continue
        suite.append(
            Expectation(
                expectation="expect_column_values_to_match_regex", kwargs={"column": column.name, "regex": regex}
            )
        )
    return suite


@cache
def known_expectations() -> frozenset[str]:
    """The names of Great Expectations' core expectations, from its package files: GE is not imported."""
    spec = importlib.util.find_spec("great_expectations")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    core = Path(next(iter(spec.submodule_search_locations))) / "expectations" / "core"
    return frozenset(path.stem for path in core.glob("expect_*.py"))


def check_configured(configured: Mapping[str, Sequence[Expectation]], tables: Mapping[str, TableSchema]) -> None:
    """Fail, naming the table and the expectation, on a configured expectation that cannot run.

    ``tables`` are the captured tables as the destinations see them (after masking). Checked here: the table
    is captured, Great Expectations knows the expectation, and the columns it names are in the window frame.
    Its other arguments are checked by Great Expectations when the suite is built (:func:`validate_window`).
    """
    known = known_expectations()
    for table_name, expectations in configured.items():
        where = f"checks.expectations.{table_name}"
        table = tables.get(table_name)
        if table is None:
            captured = ", ".join(sorted(tables)) or "none"
            raise ExpectationConfigError(f"{where}: {table_name} is not a captured table (captured: {captured})")
        columns = frame_columns(table)
        for index, expectation in enumerate(expectations):
            name = expectation.expectation
            place = f"{where}[{index}] {name}"
            if not known:
                raise ExpectationConfigError(f"{place}: great-expectations is not installed")
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ExpectationConfigError(f"{place}: Great Expectations has no expectation named {name}{hint}")
            for column in _named_columns(expectation.kwargs):
                if column not in columns:
                    raise ExpectationConfigError(
                        f"{place}: column {column!r} is not in {table_name}'s window frame "
                        f"(it has: {', '.join(columns)}; non-frozen collections and UDTs are left out)"
                    )


def _named_columns(kwargs: Mapping[str, Any]) -> list[str]:
    names = [kwargs[key] for key in _COLUMN_KWARGS if isinstance(kwargs.get(key), str)]
    for key in _COLUMN_LIST_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, list | tuple):
            names += [item for item in value if isinstance(item, str)]
    return names


# --------------------------------------------------------------------------------------------------
# The window frame


def window_frame(batches: Sequence[tuple[str, pa.RecordBatch]]) -> pd.DataFrame:
    """One row per change of ``(node, change batch)`` pairs of one table (module docstring)."""
    import pandas as pd

    tables = [_flatten(node, batch) for node, batch in batches]
    if not tables:
        return pd.DataFrame()
    # Batches staged before and after a schema change differ in columns: those missing read as null.
    combined = pa.concat_tables(tables, promote_options="permissive")
    return combined.to_pandas(types_mapper=_pandas_type, date_as_object=False)


def _flatten(node: str, batch: pa.RecordBatch) -> pa.Table:
    columns: dict[str, pa.Array] = {
        NODE: pa.array([node] * batch.num_rows, pa.string()),
        cb.SEGMENT_ID: batch.column(cb.SEGMENT_ID),
        cb.POSITION: batch.column(cb.POSITION),
        cb.KIND: batch.column(cb.KIND),
        WRITETIME: _change_write_times(batch),
    }
    for arrow_field in batch.schema:
        metadata = arrow_field.metadata or {}
        kind = metadata.get(cb.META_COLUMN_KIND)
        column = batch.column(arrow_field.name)
        if kind in (b"partition_key", b"clustering"):
            values = column
        elif (
            kind in (b"static", b"regular")
            and arrow_field.type.get_field_index("writetime") >= 0
            and metadata.get(cb.META_CQL_TYPE) != b"counter"
        ):
            values = pc.struct_field(column, "value")
        else:
            continue
        if metadata.get(cb.META_CQL_TYPE) in _DECIMAL_TYPES:
            values = pc.cast(values, pa.float64())
        columns[arrow_field.name] = values
    return pa.table(columns)


def _change_write_times(batch: pa.RecordBatch) -> pa.Array:
    """Each change's newest timestamp, the elements of non-frozen collections and UDTs included: a change
    that only adds to a set carries its write times there alone."""
    candidates = [write_times(batch)]
    for arrow_field in batch.schema:
        if arrow_field.name.startswith("_cdc_") or not pa.types.is_struct(arrow_field.type):
            continue
        if arrow_field.type.get_field_index("cells") < 0:
            continue
        cells = pc.struct_field(batch.column(arrow_field.name), "cells")
        if pa.types.is_struct(cells.type):
            # Fields by position: pyarrow reads a name as a dotted path (a UDT field `.z` would fetch `z`).
            fields = range(cells.type.num_fields)
            candidates += [pc.struct_field(pc.struct_field(cells, [i]), "writetime") for i in fields]
            continue
        elements = pc.list_flatten(cells)
        if not len(elements):
            continue
        newest = (
            pa.table({"change": pc.list_parent_indices(cells), "writetime": pc.struct_field(elements, "writetime")})
            .group_by("change")
            .aggregate([("writetime", "max")])
        )
        # Scatter each change's newest element back to its row; changes without elements stay null.
        newest = newest.filter(pc.is_valid(newest.column("writetime_max")))
        values = np.zeros(batch.num_rows, np.int64)
        present = np.zeros(batch.num_rows, bool)
        rows = newest.column("change").to_numpy()
        values[rows] = newest.column("writetime_max").to_numpy()
        present[rows] = True
        candidates.append(pa.array(values, mask=~present))
    return pc.max_element_wise(*candidates, skip_nulls=True)


def _pandas_type(arrow_type: pa.DataType) -> Any:
    """pandas' nullable dtypes for integers and booleans, so a column with nulls keeps its type."""
    import pandas as pd

    if pa.types.is_integer(arrow_type):
        return pd.api.types.pandas_dtype(str(arrow_type).capitalize())
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    return None


# --------------------------------------------------------------------------------------------------
# Validation


def validate_window(
    table: str, frame: pd.DataFrame, default: Sequence[Expectation], configured: Sequence[Expectation] = ()
) -> SuiteResult:
    """Run the default and configured expectations over a window's frame with an ephemeral GE context.

    Raises :class:`ExpectationConfigError` naming the table and the expectation when Great Expectations
    refuses one (an unknown name, a missing or unknown argument).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # An ephemeral context first: a suite resolves its store through the context current in the process.
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        ),
    )
    entries = [(expectation, False, index) for index, expectation in enumerate(default)]
    entries += [(expectation, True, index) for index, expectation in enumerate(configured)]
    suite = gx.ExpectationSuite(name=table)
    # Great Expectations keeps one of two equal expectations: entries that are equal share its result.
    slots: dict[str, Any] = {}
    entry_slots = []
    for expectation, is_configured, index in entries:
        slot = json.dumps([expectation.expectation, expectation.kwargs], sort_keys=True, default=str)
        if slot not in slots:
            slots[slot] = suite.add_expectation(_domain(table, expectation, is_configured, index))
        entry_slots.append(slot)

    batch_definition = (
        context.data_sources.add_pandas("window")
        .add_dataframe_asset(table)
        .add_batch_definition_whole_dataframe("whole window")
    )
    suite = context.suites.add(suite)
    validation = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format="SUMMARY"
    )
    by_id = {result.expectation_config.id: result for result in validation.results}
    outcomes = []
    for (expectation, is_configured, _), slot in zip(entries, entry_slots, strict=True):
        result = by_id[slots[slot].id]
        outcomes.append(_outcome(expectation, is_configured, result, frame))
    return SuiteResult(table, len(frame), outcomes)


def _domain(table: str, expectation: Expectation, configured: bool, index: int) -> Any:
    from great_expectations.exceptions import GreatExpectationsError
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    try:
        return ExpectationConfiguration(type=expectation.expectation, kwargs=dict(expectation.kwargs)).to_domain_obj()
    except (GreatExpectationsError, ValueError, TypeError) as error:
        source = f"checks.expectations.{table}[{index}]" if configured else f"the default suite of {table}"
        reason = " ".join(str(error).split())
        raise ExpectationConfigError(f"{source} {expectation.expectation}: {reason}") from None


def _outcome(expectation: Expectation, configured: bool, result: Any, frame: pd.DataFrame) -> ExpectationOutcome:
    kwargs = expectation.kwargs
    column = ", ".join(_named_columns(kwargs)) or "(table)"
    severity = str(getattr(result.expectation_config, "severity", None) or CRITICAL).lower().rsplit(".", 1)[-1]
    details = result.result or {}
    errors = _errors(result.exception_info or {})
    where: list[str] = []
    if errors:
        observed = f"error: {errors[0]}"
    elif "observed_value" in details:
        observed = _shown(details["observed_value"])
    elif "unexpected_count" in details:
        observed = f"{details['unexpected_count']:,} of {details.get('element_count', 0):,} unexpected"
        if details.get("missing_count"):
            observed += f", {details['missing_count']:,} null"
        examples = details.get("partial_unexpected_list") or []
        if examples:
            observed += ": " + ", ".join(_shown(value) for value in examples[:MAX_SHOWN])
        where = [_place(frame, index) for index in (details.get("partial_unexpected_index_list") or [])[:MAX_SHOWN]]
    else:
        observed = "—"
    return ExpectationOutcome(
        expectation=expectation.expectation,
        column=column,
        passed=bool(result.success) and not errors,
        observed=observed,
        where=where,
        severity=severity,
        configured=configured,
    )


def _errors(info: Mapping[str, Any]) -> list[str]:
    """The messages of exceptions an expectation raised: Great Expectations reports one flat, or one per metric."""
    reports = [info, *(value for value in info.values() if isinstance(value, Mapping))]
    return [str(report.get("exception_message")) for report in reports if report.get("raised_exception")]


def _place(frame: pd.DataFrame, index: Any) -> str:
    try:
        row = frame.loc[index]
    except (KeyError, TypeError):
        return str(index)
    return f"{row[NODE]} {row[cb.SEGMENT_ID]}:{row[cb.POSITION]}"


def _shown(value: Any) -> str:
    text = str(value.item() if hasattr(value, "item") else value)
    return text if len(text) <= 60 else text[:57] + "…"


def outcomes_markdown(result: SuiteResult) -> str:
    """A table of every expectation: what it reads, what was observed, passed or failed, and where."""
    lines = [
        "| expectation | column | observed | result | where | from |",
        "|---|---|---|---|---|---|",
    ]
    for outcome in sorted(result.outcomes, key=lambda o: (o.passed, not o.configured)):
        verdict = "pass" if outcome.passed else f"**FAIL** ({outcome.severity})"
        origin = "configured" if outcome.configured else "default"
        cells = [outcome.expectation, outcome.column, outcome.observed, verdict, ", ".join(outcome.where), origin]
        lines.append("| " + " | ".join(_cell(text) for text in cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
