"""The projection worker's logging: the level asked for is the level the root logger gets."""

from __future__ import annotations

import logging

import pytest

from projections.transport import ProjectionApp
from projections.worker import _counting_worker


@pytest.mark.parametrize("level", ["warning", "error"])
def test_a_quiet_level_does_not_turn_the_root_logger_to_debug(level: str) -> None:
    app = ProjectionApp("esflow-test-logging", autodiscover=False, web_enabled=False)
    worker = _counting_worker(app, level)
    number = logging.getLevelName(level.upper())
    root = logging.Logger("root-stand-in", number)  # as mode's setup_logging leaves it
    root.addHandler(logging.StreamHandler())
    worker.on_setup_root_logger(root, number)
    # Faust's spinner would have made this DEBUG, building a record for every debug call on the fetch path.
    assert not root.isEnabledFor(logging.DEBUG)
    assert len(root.handlers) == 1
