"""TLS/SASL settings reach both Kafka client libraries: librdkafka's config and Faust's credentials."""

from __future__ import annotations

import ssl

import faust
import pytest
from pydantic import SecretStr

from esflow.messaging.kafka import common_config, consumer_config, faust_credentials, producer_config
from esflow.settings import KafkaSettings


def test_plaintext_is_the_default_and_adds_no_credentials() -> None:
    kafka = KafkaSettings()
    assert common_config(kafka)["security.protocol"] == "plaintext"
    assert "sasl.username" not in common_config(kafka)
    assert faust_credentials(kafka) is None


def test_sasl_ssl_reaches_every_confluent_client_config() -> None:
    kafka = KafkaSettings(
        bootstrap="b1:9093,b2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="esflow",
        sasl_password=SecretStr("s3cret"),
        ssl_ca_location="/etc/ssl/ca.pem",
    )
    expected = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "esflow",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ssl/ca.pem",
    }
    for conf in (common_config(kafka), producer_config(kafka), consumer_config(kafka, "g")):
        assert expected.items() <= conf.items()
    # The password never shows in the settings' repr (logs, error messages).
    assert "s3cret" not in repr(kafka)


def test_faust_gets_the_same_sasl_and_tls() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password="p"
    )
    creds = faust_credentials(kafka)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, str(creds.mechanism.value)) == ("u", "p", "SCRAM-SHA-256")
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    plain = faust_credentials(KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u"))
    assert isinstance(plain, faust.SASLCredentials) and plain.ssl_context is None
    assert isinstance(faust_credentials(KafkaSettings(security_protocol="SSL")), faust.SSLCredentials)


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError):
        KafkaSettings(security_protocol="TLS")
