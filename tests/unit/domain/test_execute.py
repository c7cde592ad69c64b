from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from esflow.domain.account import AccountOpened, DepositFunds, FundsDeposited, OpenAccount
from esflow.domain.aggregates import ACCOUNT, AGGREGATES, PRODUCT, Rejection
from esflow.domain.catalog import commands_of, events_of
from esflow.domain.values import Money
from tests.unit.domain.gwt import given

OPENED = AccountOpened(owner_id=uuid4(), currency="EUR")
TEN = Money(amount=Decimal(10), currency="EUR")


def test_expected_version_matching_is_accepted() -> None:
    given(ACCOUNT, OPENED).when(DepositFunds(amount=TEN), expected_version=1).then(FundsDeposited(amount=TEN))


@pytest.mark.parametrize("expected", [0, 2, 7])
def test_expected_version_differing_is_a_version_conflict(expected: int) -> None:
    rejection = (
        given(ACCOUNT, OPENED)
        .when(DepositFunds(amount=TEN), expected_version=expected)
        .then_rejected("version_conflict", expected_version=expected, actual_version=1)
    )
    assert "version 1" in rejection.message


def test_version_conflict_wins_over_business_rules() -> None:
    # Creating an existing account would be `already_exists`; the stale version is reported first.
    given(ACCOUNT, OPENED).when(
        OpenAccount(owner_id=uuid4(), currency="EUR"), expected_version=0
    ).then_rejected("version_conflict", actual_version=1)


def test_expected_version_zero_guards_creation() -> None:
    given(ACCOUNT).when(OpenAccount(owner_id=OPENED.owner_id, currency="EUR"), expected_version=0).then(
        OPENED
    )


def test_a_command_of_another_aggregate_is_refused() -> None:
    given(PRODUCT).when(OpenAccount(owner_id=uuid4(), currency="EUR")).then_rejected("unknown_command")


def test_rejection_codes_are_machine_readable() -> None:
    with pytest.raises(ValueError):
        Rejection(code="Not A Code", message="x")


@pytest.mark.parametrize("aggregate_type", sorted(AGGREGATES))
def test_every_command_and_event_of_the_contract_is_handled(aggregate_type: str) -> None:
    # No command falls through to "not a ... command", no event to "not a ... event".
    aggregate = AGGREGATES[aggregate_type]
    assert {s.name for s in commands_of(aggregate.aggregate_type)}  # the contract has commands
    source = __import__(aggregate.decide.__module__, fromlist=["x"])
    for spec in commands_of(aggregate.aggregate_type):
        assert spec.model.__name__ in vars(source), f"{spec.name} not handled by {aggregate_type}.decide"
    for spec in events_of(aggregate.aggregate_type):
        assert spec.model.__name__ in vars(source), f"{spec.name} not handled by {aggregate_type}.evolve"
