#!/usr/bin/env bash
# Same name and arguments as the release script: container health checks call it.
exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
