"""Interop with the reference Java Avro implementation (org.apache.avro, BinaryMessageEncoder/Decoder).

Proves esflow's single-object bytes are standard Avro: Java reads every schema version Python writes
(checking the CRC-64-AVRO fingerprint itself), resolves an old version to a newer reader the way
fastavro does, and Python reads what Java writes. Needs `java`, `javac` and `mvn` (Maven Central);
the jars are cached in ~/.cache/esflow/avro-<version>/ between runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from esflow.messaging.codec import Codec
from esflow.messaging.samples import sample_record
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"
AVRO_DIR = ROOT / "ops" / "avro"
CATALOG = SchemaCatalog.load(SCHEMA_DIR)
CODEC = Codec(CATALOG)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Java:
    """The compiled interop program and its classpath."""

    classpath: str

    def run(self, commands: Sequence[str]) -> list[str]:
        """One JVM for all commands; one answer line per command."""
        result = subprocess.run(
            ["java", "-cp", self.classpath, "Interop"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120,
            check=True,
        )
        lines = result.stdout.splitlines()
        assert len(lines) == len(commands), result.stdout + result.stderr
        return lines


def _cache_root() -> Path:
    return Path(os.environ.get("ESFLOW_CACHE_DIR", Path.home() / ".cache" / "esflow"))


def _resolve_jars(version: str) -> Path:
    libs = _cache_root() / f"avro-{version}" / "libs"
    if any(libs.glob(f"avro-{version}.jar")):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Resolve into a temporary directory and rename, so an interrupted download never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix="libs.", dir=libs.parent))
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(AVRO_DIR / "pom.xml"), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    try:
        tmp.rename(libs)
    except OSError:  # another run won the race; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


@pytest.fixture(scope="module")
def java() -> Java:
    missing = [tool for tool in ("java", "javac", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the Java interop test needs {', '.join(missing)} on PATH (JDK 17+ and Maven)")
    match = re.search(r"<avro.version>([^<]+)</avro.version>", (AVRO_DIR / "pom.xml").read_text())
    assert match, "ops/avro/pom.xml names no avro.version"
    libs = _resolve_jars(match[1])
    source = (AVRO_DIR / "Interop.java").read_bytes()
    classes = libs.parent / f"classes-{hashlib.sha256(source).hexdigest()[:16]}"
    if not (classes / "Interop.class").exists():
        tmp = Path(tempfile.mkdtemp(prefix="classes.", dir=libs.parent))
        subprocess.run(
            ["javac", "-d", str(tmp), "-cp", f"{libs}/*", str(AVRO_DIR / "Interop.java")],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        try:
            tmp.rename(classes)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return Java(classpath=f"{classes}{os.pathsep}{libs}/*")


def normalise(value: Any) -> Any:
    """Python values in the JSON shape Interop.java prints (uuid, decimal as strings; times in micros)."""
    if isinstance(value, Mapping):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, Enum):
        return value.value
    return value


def path_of(schema: SchemaVersion) -> str:
    assert schema.path is not None
    return str(SCHEMA_DIR / schema.path)


def test_java_decodes_every_version_python_writes(java: Java) -> None:
    versions = list(CATALOG)
    commands = [
        f"decode {path_of(sv)} {CODEC.encode_record(sv.name, sample_record(sv), version=sv.version).hex()}"
        for sv in versions
    ]
    for sv, line in zip(versions, java.run(commands), strict=True):
        assert not line.startswith("ERROR"), f"{sv.label}: {line}"
        assert json.loads(line) == normalise(sample_record(sv)), sv.label


def test_java_resolves_an_old_version_like_esflow(java: Java) -> None:
    v1, newest = CATALOG.get("OrderPlaced", 1), CATALOG.latest("OrderPlaced")
    p1, p2 = CATALOG.get("PriceChanged", 1), CATALOG.get("PriceChanged", 2)
    assert v1 and newest and p1 and p2
    old_order = CODEC.encode_record("OrderPlaced", sample_record(v1), version=1)
    old_price = CODEC.encode_record("PriceChanged", sample_record(p1), version=1)
    resolved, no_writer, semantic = java.run(
        [
            f"decode {path_of(newest)} {path_of(v1)} {old_order.hex()}",
            f"decode {path_of(newest)} {old_order.hex()}",
            f"decode {path_of(p2)} {path_of(p1)} {old_price.hex()}",
        ]
    )
    ours = CODEC.decode_record(old_order).record
    assert json.loads(resolved) == normalise(ours)
    assert json.loads(resolved)["sales_channel"] == "UNKNOWN"
    assert json.loads(resolved)["account_id"] is None
    # Without the v1 schema Java cannot know the fingerprint: it is really checked.
    assert no_writer.startswith("ERROR MissingSchemaException"), no_writer
    # cents -> money is not expressible in Avro: Java refuses, esflow needs its code upcaster.
    assert semantic.startswith("ERROR"), semantic


def test_python_decodes_what_java_writes(java: Java) -> None:
    versions = list(CATALOG)
    answers = java.run([f"encode {path_of(sv)}" for sv in versions])
    for sv, line in zip(versions, answers, strict=True):
        assert not line.startswith("ERROR"), f"{sv.label}: {line}"
        hex_bytes, java_json = line.split(" ", 1)
        data = bytes.fromhex(hex_bytes)
        assert data[:2] == b"\xc3\x01" and data[2:10] == sv.fingerprint, f"{sv.label}: fingerprints differ"
        decoded = CODEC.decode_record(data)
        assert decoded.writer_version == sv.version
        expected = json.loads(java_json)
        if decoded.schema.version == sv.version:
            assert normalise(decoded.record) == expected, sv.label
            # The newest versions also pass model validation: Java's values fit esflow's models.
            CODEC.decode(data)
        elif sv.name in ("OrderPlaced", "PlaceOrder"):
            # Avro's defaults fill what the older writer lacked: v2's channel, v3's paying account.
            assert normalise(decoded.record) == {"sales_channel": "UNKNOWN", **expected, "account_id": None}
        else:
            assert sv.name == "PriceChanged"
            cents = expected["price_cents"]
            assert decoded.record["price"] == {"amount": Decimal(cents).scaleb(-2), "currency": "EUR"}
