"""The GraphQL schema of the API: the Query root, the generated Mutation root, the limits."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors
from strawberry.types import ExecutionContext

from api.graphql.context import ApiError
from api.graphql.limits import limit_extensions
from api.graphql.mutations import build_mutation
from api.graphql.queries import Query
from esflow.settings import ApiSettings


def _mask(error: GraphQLError) -> bool:
    # Errors of the API itself and GraphQL's own (syntax, validation, limits) speak to the caller; any
    # other exception is a bug whose text may carry internals.
    original = error.original_error
    return original is not None and not isinstance(original, ApiError | GraphQLError)


class ApiSchema(strawberry.Schema):
    """Logs only the errors that are not the caller's: bad input and refusals are answers, not faults."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log the unexpected errors (with their tracebacks)."""
        unexpected = [e for e in errors if _mask(e)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


def build_schema(settings: ApiSettings) -> strawberry.Schema:
    """The schema with its limits (one per app: limits come from ``settings``)."""
    return ApiSchema(
        query=Query,
        mutation=build_mutation(),
        extensions=[
            *limit_extensions(settings),
            lambda: MaskErrors(
                should_mask_error=_mask,
                error_message="internal error (logged by the API)",
            ),
        ],
    )


__all__ = ["build_schema"]
