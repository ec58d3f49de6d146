"""Asset checks beside the micro-batches' own blocking checks: pipeline health and per-window suites."""
