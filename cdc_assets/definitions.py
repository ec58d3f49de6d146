"""The Dagster code location (`workspace.yaml`, `dagster dev`, `dg dev` all load this module).

The reader and the destinations are pure parts with no Dagster in them; the sensors, partitioned assets
and asset checks that wire them together join these definitions as they are built.
"""

import dagster as dg

defs = dg.Definitions()
