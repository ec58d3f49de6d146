"""The segment generator: writes real-format Cassandra CDC commit log segments (versions 6, 7 and 8).

- :func:`encode_mutation` turns change dicts into the mutation bytes a node logs (the reader's inverse);
- :class:`SegmentWriter` writes segments and their ``_cdc.idx`` as a node does, plain or compressed;
- :func:`generate` runs a :class:`Workload` of realistic writes into one or more ``cdc_raw`` directories
  and keeps the changes a reader must find there.
"""

from cdc_assets.commitlog.generator.encoding import canonical_change, encode_mutation
from cdc_assets.commitlog.generator.segment_writer import SegmentFullError, SegmentWriter
from cdc_assets.commitlog.generator.workload import (
    GeneratedLog,
    OperationMix,
    SegmentSummary,
    Workload,
    generate,
    realistic_table,
)

__all__ = [
    "GeneratedLog",
    "OperationMix",
    "SegmentFullError",
    "SegmentSummary",
    "SegmentWriter",
    "Workload",
    "canonical_change",
    "encode_mutation",
    "generate",
    "realistic_table",
]
