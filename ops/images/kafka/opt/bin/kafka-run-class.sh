#!/usr/bin/env bash
# Run a class from the broker classpath, like the release's bin/kafka-run-class.sh (tools log to stderr).
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' "$@"
