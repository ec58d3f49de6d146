#!/usr/bin/env bash
# Entry point of the compose stack's Cassandra: turns CDC on in the image's cassandra.yaml, then hands over to the
# image's own entrypoint. Safe to run again on a restart: the keys it sets are removed before they are written.
#
# The commit log and cdc_raw are kept on one volume on purpose: Cassandra hard-links every new segment into
# cdc_raw, and a hard link cannot cross from one mount to another.
set -euo pipefail

conf="${CASSANDRA_CONF:-/etc/cassandra}/cassandra.yaml"
total_space="${CDC_TOTAL_SPACE:?set CDC_TOTAL_SPACE to the size limit of cdc_raw, e.g. 4096MiB}"
keys='cdc_enabled|cdc_block_writes|cdc_total_space|cdc_raw_directory|commitlog_directory'

# cdc_block_writes: when cdc_raw is full, refuse writes to CDC tables rather than delete CDC data nobody has read.
sed -i -E -e "/^#?[[:space:]]*(${keys})[[:space:]]*:/d" -e '$a\' "$conf"
cat >>"$conf" <<EOF
cdc_enabled: true
cdc_block_writes: true
cdc_total_space: ${total_space}
commitlog_directory: /var/lib/cassandra/commitlog
cdc_raw_directory: /var/lib/cassandra/cdc_raw
EOF

exec docker-entrypoint.sh "$@"
