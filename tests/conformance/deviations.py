"""How a test says the reference registry breaks its rule, for its reference run.

``@reference_deviates(reason)`` on a test, or `case(..., reference=reason)` for one
parameter of it, turns the reference's run into a strict xfail with that reason
(conftest does it at collection). The reason states what the reference was seen to
answer, so a reader knows what the xfail stands for without running anything.
"""

import pytest

MARKER = "reference_deviates"
"""The marker's name, as `reference_deviates` spells it."""


def reference_deviates(reason: str) -> pytest.MarkDecorator:
    """The mark of a test whose rule the reference registry breaks."""
    return pytest.mark.reference_deviates(reason)


def case(*values: object, id: str, reference: str | None = None) -> object:
    """One parameter set, marked when the reference breaks the rule for it."""
    marks = [reference_deviates(reference)] if reference else []
    return pytest.param(*values, id=id, marks=marks)
