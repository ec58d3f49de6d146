"""The Dagster shell: sensors, partitioned assets and resources that compose the pure parts, split by system."""
