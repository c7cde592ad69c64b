#!/usr/bin/env bash
# Same name and arguments as the release script.
exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.TopicCommand "$@"
