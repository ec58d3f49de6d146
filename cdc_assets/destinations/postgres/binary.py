"""Arrow columns as PostgreSQL's binary COPY stream (``COPY … FROM STDIN WITH (FORMAT binary)``).

The binary format spares the client the CSV writing (and bytea's hex text) and the server the parsing of
every value. A tuple is a 2-byte field count, then per field a 4-byte length (-1 for null) and the value
in the type's send format, every integer big-endian.

The stream is built in one preallocated buffer, column by column and block of rows by block of rows,
without a Python object per row: numpy writes an item of any width at any byte position through a view of
the buffer whose items overlap (``_overlapping``). A row is cut into *runs* of fixed-width *parts* (a
field's length word and value, or a variable-width field's length word alone) and the *spans* of
variable-width bytes between them. Rows with the same nulls among a run's parts share its layout: each
such group is built as numpy records and written with one assignment, one item per row. Writing costs per
item, whatever its width, so a run is kept long and a value is moved in as few wide items as it can be.

Values are checked against what PostgreSQL accepts, so an out-of-range value fails here, naming its
column, rather than wrapping around or failing on the server mid-COPY.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
# Signature, then flags (no OIDs) and the header extension's length, both int32 zero.
_HEADER = _SIGNATURE + bytes(8)
_TRAILER = b"\xff\xff"
_MAX_FIELDS = 32767

# Rows written at once: enough to amortise numpy's per-call cost, few enough that their part of the
# buffer and the temporaries stay in cache.
_BLOCK_ROWS = 1 << 14
# Rows of uuid text parsed at once.
_PARSE_ROWS = 1 << 16
# A run ends before the part that would give it more than _MAX_PATTERNS patterns of nulls (each costs a
# few numpy calls per part and block, where another run costs one more item per row), in a sample of
# _SAMPLE_ROWS rows; or more than _MAX_NULLABLE nullable parts (its patterns are 16-bit codes).
_MAX_PATTERNS = 16
_SAMPLE_ROWS = 1 << 16
_MAX_NULLABLE = 16
# Longest value of a string or binary column whose values are all as long, sent as a fixed-width part.
_MAX_FIXED_SPAN = 64
# The widest move of a value's bytes.
_WORD = 64
# A row's first value starts after the field count and a length word.
_FIRST_VALUE = 6

# PostgreSQL counts time from 2000-01-01 UTC; Arrow from 1970-01-01.
_EPOCH_SECONDS = 946_684_800
_EPOCH_DAYS = 10_957
_MICROSECONDS = {"s": 1_000_000, "ms": 1_000, "us": 1}
# PostgreSQL's ranges (datatype/timestamp.h, date.h), the high ends exclusive: timestamps in µs and dates
# in days since its epoch (the int64/int32 extremes beyond them mean ±infinity, so must not be sent), times
# in µs since midnight (24:00:00 included).
_TIMESTAMP_RANGE = (-211_813_488_000_000_000, 9_223_371_331_200_000_000)
_DATE_RANGE = (-2_451_545, 2_145_031_949)
_TIME_RANGE = (0, 86_400_000_000 + 1)

_INTEGERS = {"smallint": np.dtype(">i2"), "integer": np.dtype(">i4"), "bigint": np.dtype(">i8")}
# The PostgreSQL types binary_copy_payload sends, spelt as in DDL.
SUPPORTED_TYPES = frozenset(
    [
        *_INTEGERS,
        "boolean",
        "real",
        "double precision",
        "text",
        "bytea",
        "uuid",
        "timestamptz",
        "date",
        "time",
        "jsonb",
        "numeric",
    ]
)
_JSONB_VERSION = 1
_PLAIN_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
_MAX_NUMERIC_TEXT = 256
_NUMERIC_NEGATIVE = 0x4000

_UUID_TEXT = 36
_UUID_BYTES = 16
_UUID_HYPHENS = np.array([8, 13, 18, 23])
# A uuid's text as its five groups of digits (8-4-4-4-12), and the same groups without the hyphens.
_UUID_GROUPS = np.dtype(
    {"names": list("abcde"), "formats": ["V8", "V4", "V4", "V4", "V12"], "offsets": [0, 9, 14, 19, 24], "itemsize": 36}
)
_UUID_DIGITS = np.dtype({"names": list("abcde"), "formats": ["V8", "V4", "V4", "V4", "V12"]})
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"

_Rows = slice | np.ndarray
_NO_BYTES = np.empty(0, dtype=np.uint8)


def binary_copy_payload(table: pa.Table | pa.RecordBatch, types: Sequence[str]) -> memoryview:
    """The whole COPY BINARY stream (signature header, flags, extension length, tuples, trailer -1).

    ``types[i]`` is the PostgreSQL type of the target's i-th column, spelt as in DDL: smallint, integer,
    bigint, boolean, real, double precision, text, bytea, uuid, timestamptz, date, time, jsonb or numeric
    (from plain decimal text). An Arrow
    type the PostgreSQL type cannot take raises TypeError; a value it cannot hold, ValueError.
    """
    if len(types) != table.num_columns:
        raise ValueError(f"{len(types)} PostgreSQL types for {table.num_columns} columns")
    if len(types) > _MAX_FIELDS:
        raise ValueError(f"{len(types)} columns: a COPY tuple holds at most {_MAX_FIELDS} fields")
    pieces: list[_Part | _Spans] = [_Part(None, np.dtype(">i2"), constant=len(types), length_word=False)]
    for index, (name, pg_type) in enumerate(zip(table.column_names, types, strict=True)):
        pieces += _pieces(name, _single_array(table.column(index)), pg_type)
    rows = table.num_rows
    segments = _segments(pieces, rows)

    everything = slice(0, rows)
    sizes = np.zeros(rows, dtype=np.int64)
    for segment in segments:
        sizes += segment.widths if isinstance(segment, _Spans) else segment.widths(everything)
    starts = len(_HEADER) + _exclusive_cumsum(sizes)
    del sizes
    size = int(starts[-1]) + len(_TRAILER)
    out = _Output(size)
    out.buffer[: len(_HEADER)] = np.frombuffer(_HEADER, np.uint8)
    # Block by block, all of a block's fields before the next block's: its part of the buffer stays in
    # cache, where writing a group of rows at a time all over the buffer would miss it at every row.
    for first in range(0, rows, _BLOCK_ROWS):
        block = slice(first, min(first + _BLOCK_ROWS, rows))
        positions, at = starts[block], []
        for segment in segments:
            at.append(positions)
            positions = positions + (segment.widths[block] if isinstance(segment, _Spans) else segment.widths(block))
        # Spans before runs: a span may write past a value's end, onto bytes a later span or a run then
        # writes, but never as far as the next row's first value.
        limits = starts[block.start + 1 : block.stop + 1] + _FIRST_VALUE
        for segment, positions in zip(segments, at, strict=True):
            if isinstance(segment, _Spans):
                _copy_spans(out, segment, block, positions, limits)
        for segment, positions in zip(segments, at, strict=True):
            if isinstance(segment, _Run):
                _write_run(out, segment, block, positions)
    out.buffer[size - len(_TRAILER) : size] = np.frombuffer(_TRAILER, np.uint8)
    return memoryview(out.buffer)[:size]


@dataclass(frozen=True)
class _Part:
    """What a row holds of a field at a width fixed by whether it is null: its 4-byte length word (none
    for the tuple's field count), then, unless null, an item of ``dtype`` (none when ``dtype`` is None).

    The items are ``values(rows)``, or ``constant`` for every row; the length word is each valid row's
    ``lengths`` (a variable-width field, whose bytes follow in a :class:`_Spans`), else ``dtype``'s width.
    """

    valid: np.ndarray | None
    dtype: np.dtype | None
    values: Callable[[_Rows], np.ndarray] | None = None
    constant: int | None = None
    lengths: np.ndarray | None = None
    length_word: bool = True

    @property
    def width(self) -> int:
        return 0 if self.dtype is None else self.dtype.itemsize


@dataclass(frozen=True)
class _Spans:
    """A variable-width field's bytes: ``data[starts[i] : starts[i] + lengths[i]]`` (no bytes for a null),
    after jsonb's version byte when ``jsonb``; ``widths`` is what each row's bytes take."""

    data: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    widths: np.ndarray
    jsonb: bool = False


@dataclass(frozen=True)
class _Layout:
    """A run's record for rows with one pattern of nulls, and a record holding its constant fields
    (length words but variable ones, constant values)."""

    present: tuple[bool, ...]
    dtype: np.dtype
    template: np.ndarray
    # The fields filled per row: (length word field or None, value field or None, part).
    filled: tuple[tuple[str | None, str | None, _Part], ...]


@dataclass(frozen=True)
class _Run:
    """Consecutive parts, and each row's pattern of nulls among them: bit ``i`` of ``codes`` is set where
    the ``i``-th nullable part is valid (``codes`` is None when no part is nullable). ``layouts`` holds
    the layout of each code in ``patterns``, the codes present; ``widths_by_code`` their widths."""

    parts: list[_Part]
    codes: np.ndarray | None
    patterns: np.ndarray
    layouts: list[_Layout]
    widths_by_code: np.ndarray

    def widths(self, rows: slice) -> int | np.ndarray:
        """Each row's bytes of the run."""
        if len(self.layouts) == 1:
            return self.layouts[0].dtype.itemsize
        return self.widths_by_code[self.codes[rows]]


def _segments(pieces: list[_Part | _Spans], rows: int) -> list[_Run | _Spans]:
    """The pieces as runs of consecutive parts and the spans between them, in row order."""
    segments: list[_Run | _Spans] = []
    parts: list[_Part] = []
    for piece in pieces:
        if isinstance(piece, _Spans):
            segments += [*_runs(parts, rows), piece]
            parts = []
        else:
            parts.append(piece)
    return segments + _runs(parts, rows)


def _runs(parts: list[_Part], rows: int) -> list[_Run]:
    """``parts`` as runs, each as long as its rows show at most ``_MAX_PATTERNS`` patterns of nulls.

    Each pattern costs a few numpy calls per part and block; past a few, an extra write per row for
    another run costs less. Where to cut is judged on a sample of the rows.
    """
    sample = slice(None, None, max(1, rows // _SAMPLE_ROWS))
    runs: list[_Run] = []
    first, bits, codes = 0, 0, np.zeros(len(range(rows)[sample]), dtype=np.uint16)
    for index, part in enumerate(parts):
        if part.valid is None:
            continue
        trial = codes | part.valid[sample].astype(np.uint16) << bits
        if bits == _MAX_NULLABLE or (bits and np.count_nonzero(np.bincount(trial)) > _MAX_PATTERNS):
            runs.append(_run(parts[first:index], rows))
            first, bits, trial = index, 0, part.valid[sample].astype(np.uint16)
        codes, bits = trial, bits + 1
    return [*runs, _run(parts[first:], rows)] if parts else runs


def _run(parts: list[_Part], rows: int) -> _Run:
    nullable = [index for index, part in enumerate(parts) if part.valid is not None]
    if not nullable:
        layout = _layout(parts, [True] * len(parts))
        return _Run(parts, None, np.zeros(1, dtype=np.int64), [layout], np.array([layout.dtype.itemsize]))
    codes = np.zeros(rows, dtype=np.uint16)
    for bit, index in enumerate(nullable):
        codes |= parts[index].valid.astype(np.uint16) << bit
    patterns = np.flatnonzero(np.bincount(codes, minlength=1 << len(nullable)))
    layouts = []
    widths_by_code = np.zeros(1 << len(nullable), dtype=np.int64)
    for code in patterns.tolist():
        present = [True] * len(parts)
        for bit, index in enumerate(nullable):
            present[index] = bool(code >> bit & 1)
        layouts.append(_layout(parts, present))
        widths_by_code[code] = layouts[-1].dtype.itemsize
    return _Run(parts, codes, patterns, layouts, widths_by_code)


def _layout(parts: list[_Part], present: list[bool]) -> _Layout:
    fields = []
    for index, (part, valid) in enumerate(zip(parts, present, strict=True)):
        if part.length_word:
            fields.append((f"h{index}", ">i4"))
        if valid and part.dtype is not None:
            fields.append((f"v{index}", part.dtype))
    template = np.zeros(1, dtype=fields)
    filled = []
    for index, (part, valid) in enumerate(zip(parts, present, strict=True)):
        if part.length_word:
            template[f"h{index}"] = -1 if not valid else part.width
        if valid and part.constant is not None:
            template[f"v{index}"] = part.constant
        if valid and (part.lengths is not None or part.values is not None):
            header = f"h{index}" if part.lengths is not None else None
            filled.append((header, f"v{index}" if part.values is not None else None, part))
    return _Layout(tuple(present), template.dtype, template.view(f"V{template.dtype.itemsize}"), tuple(filled))


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    """``[0, v0, v0 + v1, …]``: one more element than ``values``."""
    result = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=result[1:])
    return result


class _Output:
    """The stream's buffer, and views of it to write an item of any width at any byte position."""

    def __init__(self, size: int) -> None:
        # Past the trailer, room for the last row's spans to write past their values.
        self.buffer = np.empty(size + _FIRST_VALUE, dtype=np.uint8)
        self._views: dict[int, np.ndarray] = {}

    def at(self, width: int) -> np.ndarray:
        view = self._views.get(width)
        if view is None:
            view = self._views[width] = _overlapping(self.buffer, width)
        return view


def _overlapping(data: np.ndarray, width: int, dtype: str | None = None) -> np.ndarray:
    """``data`` as ``width``-byte items, one starting at every byte: item ``i`` is ``data[i : i + width]``.

    Writes through it are safe as long as no two written items overlap with different bytes.
    """
    shape = (max(len(data) - width + 1, 0),)
    return np.ndarray(shape=shape, dtype=dtype or f"V{width}", buffer=data, strides=(1,))


# --------------------------------------------------------------------------------------------------
# Writing


def _write_run(out: _Output, run: _Run, block: slice, positions: np.ndarray) -> None:
    """Writes the run's parts of the block's rows from ``positions`` on, one record per row, a group of
    rows with the same nulls at a time."""
    if len(run.layouts) == 1:
        _write_records(out, run.parts, run.layouts[0], block, positions)
        return
    codes = run.codes[block]
    order = np.argsort(codes, kind="stable")  # a radix sort, for 16-bit codes
    counts = np.bincount(codes, minlength=len(run.widths_by_code))[run.patterns].tolist()
    end = 0
    for layout, count in zip(run.layouts, counts, strict=True):
        if count:
            group = order[end : end + count]
            _write_records(out, run.parts, layout, group + block.start, positions[group])
            end += count


def _write_records(out: _Output, parts: list[_Part], layout: _Layout, rows: _Rows, positions: np.ndarray) -> None:
    """Writes the parts of ``rows`` (which have the layout's nulls) as records at ``positions``."""
    records = np.empty(len(positions), dtype=layout.dtype)
    items = records.view(layout.template.dtype)
    items[...] = layout.template
    for header, value, part in layout.filled:
        if header is not None:
            records[header] = part.lengths[rows]
        if value is not None:
            records[value] = part.values(rows)
    out.at(layout.dtype.itemsize)[positions] = items


def _copy_spans(out: _Output, spans: _Spans, block: slice, targets: np.ndarray, limits: np.ndarray) -> None:
    """Copies the block's values of ``spans`` to ``targets`` in the output, in wide moves.

    A value moves as one item of the smallest power of two that holds it, when the item ends by the row's
    ``limits`` (and inside the source); else as two overlapping items of half that, which end at its end.
    A value longer than ``_WORD`` moves as ``_WORD``-byte words, the last one ending at its end.
    """
    data, sources, lengths = spans.data, spans.starts[block], spans.lengths[block]
    if spans.jsonb:
        # Every row's, null or not: a null's lands on the first byte of the next run, written later.
        out.buffer[targets] = _JSONB_VERSION
        targets = targets + 1
    longest = int(lengths.max(initial=0))
    if longest > _WORD:
        long = np.flatnonzero(lengths > _WORD)
        src, dst, counts = sources[long], targets[long], lengths[long]
        words = (counts + _WORD - 1) // _WORD
        last = np.cumsum(words)
        source = np.repeat(src - _WORD * (last - words), words) + _WORD * np.arange(int(last[-1]), dtype=np.int64)
        source[last - 1] = src + counts - _WORD
        out.at(_WORD)[source + np.repeat(dst - src, words)] = _overlapping(data, _WORD)[source]
    shortest = int(lengths.min(where=lengths > 0, initial=_WORD + 1))
    width = _WORD
    while width:
        half = width // 2
        if shortest <= width and longest > half:
            pick = np.flatnonzero((lengths > half) & (lengths <= width))
            src, dst, counts = sources[pick], targets[pick], lengths[pick]
            whole = (counts == width) | ((dst + width <= limits[pick]) & (src + width <= len(data)))
            if not whole.all():
                split = np.flatnonzero(~whole)
                src_split, dst_split, tail = src[split], dst[split], counts[split] - half
                items, view = _overlapping(data, half), out.at(half)
                view[dst_split] = items[src_split]
                view[dst_split + tail] = items[src_split + tail]
                whole = np.flatnonzero(whole)
                src, dst = src[whole], dst[whole]
            out.at(width)[dst] = _overlapping(data, width)[src]
        width = half


# --------------------------------------------------------------------------------------------------
# Arrow buffers as numpy arrays (zero copy, honouring the array's offset)


def _single_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.Array):
        return column
    if pa.types.is_dictionary(column.type) and _is_string(column.type.value_type):
        # Chunks may have dictionaries of their own: decode them before putting the chunks together.
        column = column.cast(column.type.value_type)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _bits(buffer: pa.Buffer, offset: int, length: int) -> np.ndarray:
    """Bits ``offset`` to ``offset + length`` of an Arrow bitmap (least significant bit first), as 0/1 bytes."""
    if length == 0:
        return np.zeros(0, dtype=np.uint8)
    first, shift = divmod(offset, 8)
    raw = np.frombuffer(buffer, np.uint8, count=(shift + length + 7) // 8, offset=first)
    return np.unpackbits(raw, bitorder="little")[shift : shift + length]


def _validity(array: pa.Array) -> np.ndarray | None:
    if array.null_count == 0:
        return None
    bitmap = array.buffers()[0]
    if bitmap is None:  # the null type's
        return np.zeros(len(array), dtype=bool)
    return _bits(bitmap, array.offset, len(array)).view(bool)


def _values(array: pa.Array, dtype: np.dtype | type) -> np.ndarray:
    buffer = array.buffers()[1]
    if buffer is None or len(array) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(buffer, dtype, count=array.offset + len(array))[array.offset :]


def _offsets(array: pa.Array) -> np.ndarray:
    """A string or binary array's ``len + 1`` value offsets into its data buffer, as int64."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    buffer = array.buffers()[1]
    if buffer is None:
        return np.zeros(len(array) + 1, dtype=np.int64)
    offsets = np.frombuffer(buffer, np.int64 if large else np.int32, count=array.offset + len(array) + 1)
    return offsets[array.offset :].astype(np.int64)


def _data(array: pa.Array) -> np.ndarray:
    buffer = array.buffers()[2]
    return _NO_BYTES if buffer is None else np.frombuffer(buffer, np.uint8)


def _check_range(
    name: str, pg_type: str, values: np.ndarray, valid: np.ndarray | None, accepts: Callable[[int], bool], unit: str
) -> None:
    """Raises unless ``accepts`` every valid value; what it accepts must be one interval, so the smallest and
    largest valid values decide (as Python integers, which cannot overflow)."""
    if len(values) == 0:
        return
    # The extremes of all slots are cheap, and almost always decide: a null's slot seldom holds an outlier.
    extremes = [int(values.min()), int(values.max())]
    if all(accepts(value) for value in extremes):
        return
    if valid is not None:
        if not valid.any():
            return
        info = np.iinfo(values.dtype)
        extremes = [int(values.min(where=valid, initial=info.max)), int(values.max(where=valid, initial=info.min))]
    for value in extremes:
        if not accepts(value):
            raise _out_of_range(name, pg_type, f"{value}{unit}")


# --------------------------------------------------------------------------------------------------
# Columns


def _pieces(name: str, array: pa.Array, pg_type: str) -> list[_Part | _Spans]:
    """The parts (and spans) of a column sent as ``pg_type``; raises for an Arrow type it cannot take."""
    if pg_type not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(SUPPORTED_TYPES))
        raise ValueError(f"column {name!r}: PostgreSQL type {pg_type!r} is not one of {supported}")
    arrow = array.type
    if pa.types.is_dictionary(arrow) and _is_string(arrow.value_type):
        array = array.cast(arrow.value_type)
        arrow = array.type
    valid = _validity(array)
    if pg_type in _INTEGERS and pa.types.is_integer(arrow):
        return [_integers(name, pg_type, array, valid)]
    if pg_type == "boolean" and pa.types.is_boolean(arrow):
        bits = _bits(array.buffers()[1], array.offset, len(array))
        return [_Part(valid, np.dtype("u1"), bits.__getitem__)]
    if pg_type in ("real", "double precision") and (pa.types.is_float32(arrow) or pa.types.is_float64(arrow)):
        return [_floats(name, pg_type, array, valid)]
    if pg_type in ("text", "jsonb") and _is_string(arrow):
        return _variable(array, valid, pg_type == "jsonb")
    if pg_type == "bytea" and (pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow)):
        return _variable(array, valid, False)
    if pg_type == "bytea" and pa.types.is_fixed_size_binary(arrow):
        return [_fixed_binary(array, valid)]
    if pg_type == "uuid" and _is_string(arrow):
        return [_Part(valid, np.dtype(f"V{_UUID_BYTES}"), _uuids(name, array, valid).__getitem__)]
    if pg_type == "numeric" and _is_string(arrow):
        return _variable(numeric_send(name, array), valid, False)
    if pg_type == "uuid" and pa.types.is_fixed_size_binary(arrow) and arrow.byte_width == _UUID_BYTES:
        return [_fixed_binary(array, valid)]
    if pg_type == "timestamptz" and pa.types.is_timestamp(arrow):
        return [_timestamps(name, array, valid)]
    if pg_type == "date" and pa.types.is_date32(arrow):
        return [_dates(name, array, valid)]
    if pg_type == "time" and (pa.types.is_time32(arrow) or pa.types.is_time64(arrow)):
        return [_times(name, array, valid)]
    raise TypeError(f"column {name!r}: Arrow type {arrow} cannot be sent as PostgreSQL {pg_type}")


def plain_decimals(values: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every value is decimal text :func:`numeric_send` takes (nulls aside)."""
    return bool(pc.all(pc.match_substring_regex(pc.fill_null(values, "0"), _PLAIN_DECIMAL)).as_py() is not False)


def numeric_send(name: str, array: pa.Array) -> pa.Array:
    """Plain decimal text (``-123.4500``: digits, at most one point, no exponent) as numeric_send's bytes:
    the count of base-10000 digits, the weight of the first, the sign and the display scale (int16 each),
    then the digits from the first to the last non-zero one. Other text raises ValueError."""
    n = len(array)
    if n == 0:
        return pa.array([], pa.binary())
    texts = pc.fill_null(array, "0")
    plain = pc.match_substring_regex(texts, _PLAIN_DECIMAL)
    if not pc.all(plain).as_py():
        bad = texts[int(np.argmin(plain.to_numpy(zero_copy_only=False)))].as_py()
        raise ValueError(f"column {name!r}: {bad!r} is not plain decimal text, which numeric is sent from")
    if pc.max(pc.utf8_length(texts)).as_py() > _MAX_NUMERIC_TEXT:
        raise ValueError(f"column {name!r}: decimal text longer than {_MAX_NUMERIC_TEXT} characters")
    negative = pc.starts_with(texts, "-").to_numpy(zero_copy_only=False)
    body = pc.utf8_ltrim(texts, "-")
    pointed = pc.if_else(pc.match_substring(body, "."), body, pc.binary_join_element_wise(body, ".", ""))
    halves = pc.split_pattern(pointed, ".", max_splits=1)
    whole, fraction = pc.list_element(halves, 0), pc.list_element(halves, 1)
    whole_groups = -(-max(1, pc.max(pc.utf8_length(whole)).as_py() or 1) // 4)
    fraction_groups = -(-(pc.max(pc.utf8_length(fraction)).as_py() or 0) // 4)
    groups = whole_groups + fraction_groups
    padded = pc.binary_join_element_wise(
        pc.utf8_lpad(whole, 4 * whole_groups, "0"), pc.utf8_rpad(fraction, 4 * fraction_groups, "0"), ""
    )
    digits = _data(padded)[: n * 4 * groups].reshape(n, groups, 4).astype(np.int16) - ord("0")
    values = digits @ np.array([1000, 100, 10, 1], dtype=np.int16)
    nonzero = values != 0
    present = nonzero.any(axis=1)
    first = np.argmax(nonzero, axis=1)
    count = np.where(present, groups - np.argmax(nonzero[:, ::-1], axis=1) - first, 0)
    header = np.zeros((n, 4), dtype=np.int16)
    header[:, 0] = count
    header[:, 1] = np.where(present, whole_groups - 1 - first, 0)
    header[:, 2] = np.where(present & negative, _NUMERIC_NEGATIVE, 0)
    header[:, 3] = pc.utf8_length(fraction).to_numpy(zero_copy_only=False)
    shifted = np.take_along_axis(np.pad(values, ((0, 0), (0, groups))), first[:, None] + np.arange(groups), axis=1)
    record = np.hstack([header, shifted]).astype(">i2").view(np.uint8).reshape(n, -1)
    keep = np.arange(record.shape[1]) < (8 + 2 * count)[:, None]
    offsets = np.r_[0, np.cumsum(8 + 2 * count)].astype(np.int32)
    sent = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(record[keep])])
    return pc.if_else(pc.is_valid(array), sent, pa.scalar(None, pa.binary())) if array.null_count else sent


def _is_string(arrow: pa.DataType) -> bool:
    return pa.types.is_string(arrow) or pa.types.is_large_string(arrow)


def _out_of_range(name: str, pg_type: str, value: object) -> ValueError:
    return ValueError(f"column {name!r}: {value} is out of range for PostgreSQL {pg_type}")


def _integers(name: str, pg_type: str, array: pa.Array, valid: np.ndarray | None) -> _Part:
    target = _INTEGERS[pg_type]
    values = _values(array, np.dtype(array.type.to_pandas_dtype()))
    low, high = np.iinfo(target).min, np.iinfo(target).max
    if not low <= np.iinfo(values.dtype).min <= np.iinfo(values.dtype).max <= high:
        _check_range(name, pg_type, values, valid, lambda value: low <= value <= high, "")
    return _Part(valid, target, values.__getitem__)


def _floats(name: str, pg_type: str, array: pa.Array, valid: np.ndarray | None) -> _Part:
    values = _values(array, np.float32 if pa.types.is_float32(array.type) else np.float64)
    target = np.dtype(">f4" if pg_type == "real" else ">f8")
    if target.itemsize < values.itemsize:
        # PostgreSQL's float8 → float4 refuses a finite value that overflows, or a non-zero one that
        # underflows to zero; so does this.
        with np.errstate(over="ignore", under="ignore"):
            narrowed = values.astype(np.float32)
        lost = (np.isinf(narrowed) & np.isfinite(values)) | ((narrowed == 0) & (values != 0))
        if valid is not None:
            lost &= valid
        if lost.any():
            raise _out_of_range(name, pg_type, values[np.argmax(lost)])

    def converted(rows: _Rows) -> np.ndarray:
        with np.errstate(over="ignore", under="ignore"):  # a null's slot may hold anything
            return values[rows].astype(target)

    return _Part(valid, target, converted)


def _variable(array: pa.Array, valid: np.ndarray | None, jsonb: bool) -> list[_Part | _Spans]:
    """A string or binary column: its length words (and jsonb's version byte), then its bytes."""
    offsets = _offsets(array)
    lengths = np.diff(offsets)
    if valid is not None:
        lengths *= valid  # a null's slot may still span bytes
    data, starts = _data(array), offsets[:-1]
    where = True if valid is None else valid
    shortest = int(lengths.min(where=where, initial=_MAX_FIXED_SPAN + 1)) if len(lengths) else 0
    if not jsonb and shortest == int(lengths.max(initial=0)) <= _MAX_FIXED_SPAN:
        # Every value as long (one-letter codes, fixed-size identifiers): a fixed-width part, no spans.
        if shortest == 0:
            return [_Part(valid, None)]
        items = _overlapping(data, shortest)
        return [_Part(valid, items.dtype, lambda rows: items[starts[rows]])]
    # Null or not, only the length word is fixed (-1 for a null): one layout. jsonb's version byte is
    # written with the value's bytes.
    widths = lengths + jsonb if valid is None else lengths + jsonb * valid
    words = widths if valid is None else widths - ~valid
    return [_Part(None, None, lengths=words), _Spans(data, starts, lengths, widths, jsonb)]


def _fixed_binary(array: pa.Array, valid: np.ndarray | None) -> _Part:
    width = array.type.byte_width
    if width == 0:
        return _Part(valid, None)
    buffer = array.buffers()[1]
    data = np.frombuffer(buffer, np.uint8, count=(array.offset + len(array)) * width) if len(array) else _NO_BYTES
    items = data[array.offset * width :].view(f"V{width}")
    return _Part(valid, items.dtype, items.__getitem__)


def _uuids(name: str, array: pa.Array, valid: np.ndarray | None) -> np.ndarray:
    """Hyphenated hex text (either case) as the 16 bytes of uuid_send, one ``V16`` item per row."""
    lengths = np.diff(_offsets(array))
    wrong = lengths != _UUID_TEXT if valid is None else valid & (lengths != _UUID_TEXT)
    if wrong.any():
        raise _bad_uuid(name, array, int(np.argmax(wrong)))
    if not (lengths == _UUID_TEXT).all():
        # Nulls of another length: give them a uuid's text, so that every row's text is 36 bytes apart.
        array = pc.fill_null(array, _ZERO_UUID)
    offsets = _offsets(array)
    text = _data(array)[offsets[0] : offsets[-1]]
    result = np.empty((len(array), _UUID_BYTES), dtype=np.uint8)
    for first in range(0, len(array), _PARSE_ROWS):
        block = text[first * _UUID_TEXT : (first + _PARSE_ROWS) * _UUID_TEXT]
        rows = len(block) // _UUID_TEXT
        digits = block.view(_UUID_GROUPS).astype(_UUID_DIGITS).view(np.uint8).reshape(rows, 2 * _UUID_BYTES)
        hex_digit = ((digits - ord("0")) < 10) | (((digits | 0x20) - ord("a")) < 6)  # uint8 wraps below 0
        hyphens = block.reshape(rows, _UUID_TEXT)[:, _UUID_HYPHENS] == ord("-")
        if not (hex_digit.all() and hyphens.all()):
            bad = ~hex_digit.all(axis=1) | ~hyphens.all(axis=1)
            if valid is not None:
                bad &= valid[first : first + rows]
            if bad.any():
                raise _bad_uuid(name, array, first + int(np.argmax(bad)))
        # A digit's value: its low four bits, plus 9 for a letter (0x41-0x46, 0x61-0x66).
        nibbles = ((digits & 15) + 9 * (digits >> 6)).view("<u2")
        # Each uint16 holds a pair of digits, the first in its low byte: the byte they spell.
        result[first : first + rows] = (nibbles << 4) | (nibbles >> 8)
    return result.view(f"V{_UUID_BYTES}").reshape(-1)


def _bad_uuid(name: str, array: pa.Array, index: int) -> ValueError:
    return ValueError(f"column {name!r}: {array[index].as_py()!r} is not a uuid (hyphenated hex, 36 characters)")


def _timestamps(name: str, array: pa.Array, valid: np.ndarray | None) -> _Part:
    unit = array.type.unit

    def since_2000(values: np.ndarray | int) -> np.ndarray | int:
        """µs since PostgreSQL's epoch; nanoseconds floored, as PostgreSQL keeps microseconds."""
        if unit == "ns":
            return values // 1_000 - _EPOCH_SECONDS * 1_000_000
        factor = _MICROSECONDS[unit]
        # Shift before scaling: the other order overflows near PostgreSQL's upper bound.
        return (values - _EPOCH_SECONDS * 1_000_000 // factor) * factor

    values = _values(array, np.int64)
    low, high = _TIMESTAMP_RANGE
    _check_range(name, "timestamptz", values, valid, lambda v: low <= since_2000(v) < high, f" {unit} since 1970")
    return _Part(valid, np.dtype(">i8"), lambda rows: since_2000(values[rows]))


def _dates(name: str, array: pa.Array, valid: np.ndarray | None) -> _Part:
    values = _values(array, np.int32)
    low, high = _DATE_RANGE
    _check_range(name, "date", values, valid, lambda value: low <= value - _EPOCH_DAYS < high, " days since 1970")
    return _Part(valid, np.dtype(">i4"), lambda rows: values[rows] - np.int32(_EPOCH_DAYS))


def _times(name: str, array: pa.Array, valid: np.ndarray | None) -> _Part:
    unit = array.type.unit
    values = _values(array, np.int32 if unit in ("s", "ms") else np.int64)

    def micros(raw: np.ndarray | int) -> np.ndarray | int:
        return raw // 1_000 if unit == "ns" else raw * _MICROSECONDS[unit]

    low, high = _TIME_RANGE
    _check_range(name, "time", values, valid, lambda value: low <= micros(value) < high, f" {unit} since midnight")
    return _Part(valid, np.dtype(">i8"), lambda rows: micros(values[rows].astype(np.int64)))
