"""Input limits of the GraphQL endpoint: depth (strawberry's limiter), cost, aliases, tokens.

Cost. Every field costs 1; a field that takes a ``first`` argument (a page) costs 1 plus ``first``
times the cost of its selection, so ``orders(first: 100) { edges { node { number } } }`` costs
1 + 100 * 3. ``first`` given by a variable is read from the request's variables; left out, the
argument's default counts. Introspection costs nothing (anonymous callers may always read the schema).

The only Python library for this (graphql-complexity 1.0) fails on any operation with a variable that
has no default value, and counts list multipliers only on list-typed fields, which a connection is not;
the rule is therefore written here, on graphql-core's AST, beside strawberry's depth limiter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)

from esflow.settings import ApiSettings

PAGE_ARGUMENT = "first"


class _Cost:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        max_page_size: int,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.max_page_size = max_page_size

    def _fields(
        self, parent: Any, selection_set: SelectionSetNode | None, seen: frozenset[str]
    ) -> Iterator[tuple[Any, FieldNode, frozenset[str]]]:
        for sel in selection_set.selections if selection_set else ():
            if isinstance(sel, FieldNode):
                yield parent, sel, seen
            elif isinstance(sel, InlineFragmentNode):
                cond = self.schema.get_type(sel.type_condition.name.value) if sel.type_condition else parent
                yield from self._fields(cond, sel.selection_set, seen)
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value not in seen:
                frag = self.fragments.get(sel.name.value)
                if frag is not None:
                    cond = self.schema.get_type(frag.type_condition.name.value)
                    yield from self._fields(cond, frag.selection_set, seen | {sel.name.value})

    def _page(self, node: FieldNode, default: Any) -> int:
        for arg in node.arguments or ():
            if arg.name.value != PAGE_ARGUMENT:
                continue
            value: Any = None
            if isinstance(arg.value, IntValueNode):
                value = int(arg.value.value)
            elif isinstance(arg.value, VariableNode):
                value = self.variables.get(arg.value.name.value)
            # A value that is not an int fails validation anyway; count the worst case meanwhile.
            return value if isinstance(value, int) and value >= 0 else self.max_page_size
        return default if isinstance(default, int) else self.max_page_size

    def of(self, parent: Any, selection_set: SelectionSetNode | None, seen: frozenset[str]) -> int:
        """The cost of a selection set on ``parent`` (a GraphQL type)."""
        total = 0
        for owner, node, seen_here in self._fields(parent, selection_set, seen):
            name = node.name.value
            if name.startswith("__"):
                continue
            field = (
                owner.fields.get(name)
                if isinstance(owner, GraphQLObjectType | GraphQLInterfaceType)
                else None
            )
            child = get_named_type(field.type) if field is not None else None
            inner = self.of(child, node.selection_set, seen_here) if node.selection_set else 0
            page = field.args.get(PAGE_ARGUMENT) if field is not None else None
            factor = self._page(node, page.default_value) if page is not None else 1
            total += 1 + factor * inner
        return total


def operation_costs(
    schema: GraphQLSchema,
    document_definitions: Any,
    variables: Mapping[str, Any],
    max_page_size: int,
) -> dict[str, dict[str, int]]:
    """Per operation, the cost of each of its top-level fields (see the module docstring)."""
    fragments = {d.name.value: d for d in document_definitions if isinstance(d, FragmentDefinitionNode)}
    cost = _Cost(schema, fragments, variables, max_page_size)
    out: dict[str, dict[str, int]] = {}
    for d in document_definitions:
        if not isinstance(d, OperationDefinitionNode):
            continue
        root = schema.get_root_type(d.operation)
        per_field: dict[str, int] = {}
        for owner, node, seen in cost._fields(root, d.selection_set, frozenset()):
            if node.name.value.startswith("__"):
                continue
            key = node.alias.value if node.alias else node.name.value
            sub = SelectionSetNode(selections=(node,))
            per_field[key] = per_field.get(key, 0) + cost.of(owner, sub, seen)
        out[d.name.value if d.name else "(anonymous)"] = per_field
    return out


class CostLimiter(SchemaExtension):
    """Refuses an operation whose cost exceeds ``max_cost``; the error names the costliest fields.

    Not a validation rule: the cost depends on the request's variables, while validation results are
    cached per document (strawberry's ``ValidationCache``, listed before this extension). The error is
    added to the validation errors, so the operation is refused before anything executes.
    """

    def __init__(self, *, max_cost: int, max_page_size: int) -> None:
        self.max_cost = max_cost
        self.max_page_size = max_page_size

    def on_validate(self) -> Iterator[None]:
        """Add the cost error, if any, to the validation errors."""
        ctx = self.execution_context
        if ctx.graphql_document is not None:
            costs = operation_costs(
                ctx.schema._schema, ctx.graphql_document.definitions, ctx.variables or {}, self.max_page_size
            )
            for operation, fields in costs.items():
                total = sum(fields.values())
                if total > self.max_cost:
                    worst = sorted(fields.items(), key=lambda kv: -kv[1])[:3]
                    named = ", ".join(f"{name}: {cost}" for name, cost in worst)
                    error = GraphQLError(
                        f"operation {operation} costs {total}, more than the limit {self.max_cost} "
                        f"({named}; a page costs `first` times its selection)",
                        extensions={"code": "QUERY_TOO_COMPLEX", "cost": total, "fields": dict(worst)},
                    )
                    ctx.pre_execution_errors = [*(ctx.pre_execution_errors or []), error]
        yield


def limit_extensions(settings: ApiSettings) -> list[Callable[[], SchemaExtension]]:
    """Factories of the schema extensions that enforce the configured limits (one set per request)."""
    # strawberry's limiters build their validation rule classes when constructed: built once here and
    # shared by every request, so the validation cache (keyed by document and rule classes) can hit.
    rules = [
        *QueryDepthLimiter(max_depth=settings.max_depth).validation_rules,
        # Aliases bound the work of validating before any cost is known (tokens bound parsing).
        *MaxAliasesLimiter(max_alias_count=50).validation_rules,
    ]
    return [
        functools.partial(AddValidationRules, rules),
        functools.partial(MaxTokensLimiter, max_token_count=5000),
        # Parsing a document costs about as much as answering a cached query; kept per query text.
        functools.partial(ParserCache, maxsize=1000),
        # Validating a document costs more than answering a cached query: clients repeat a few
        # documents with other variables, so validation results are kept per document, bounded.
        functools.partial(ValidationCache, maxsize=1000),
        # After the cache, which sets the validation errors this one adds to.
        functools.partial(
            CostLimiter, max_cost=settings.max_complexity, max_page_size=settings.max_page_size
        ),
    ]


__all__ = ["CostLimiter", "limit_extensions", "operation_costs"]
