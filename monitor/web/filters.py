"""Request parameters -> validated values, with errors that name the parameter.

The pages and the API share these parsers, so a bad filter reads the same in both: the
API answers 422 with the message, a page shows it above the form.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timezone
from typing import Annotated, Mapping, Sequence

from fastapi import Path

from monitor.names import INDICATORS
from monitor.store.records import QUEUE_LABELLED, QUEUE_SORTS, QueueQuery

LABELLED_CHOICES = QUEUE_LABELLED
SORT_CHOICES = QUEUE_SORTS
MAX_PER_PAGE = 200
QUEUE_PARAMETERS = ("model", "since", "until", "class", "labelled", "min_score", "max_score", "sort", "page", "per_page",
                    "ids")

MAX_QUEUE_IDS = 500
"""Most sample ids the queue's `ids` filter takes (a shadow evaluation keeps as many of each side)."""


class FilterError(ValueError):
    """A request parameter that cannot be used; `parameter` names it for the 4xx answer."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class QueueFilters(QueueQuery):
    """The store's queue query as the page and the API parse it from request parameters."""

    def as_params(self, **changes) -> dict[str, str]:
        """The filters as query parameters (defaults left out), e.g. for pagination links."""
        filters = replace(self, **changes)
        params: dict[str, str] = {}
        if filters.since is not None:
            params["since"] = filters.since.strftime("%Y-%m-%dT%H:%M")
        if filters.until is not None:
            params["until"] = filters.until.strftime("%Y-%m-%dT%H:%M")
        if filters.predicted_class is not None:
            params["class"] = str(filters.predicted_class)
        if filters.labelled != "any":
            params["labelled"] = filters.labelled
        if filters.min_score is not None:
            params["min_score"] = repr(filters.min_score)
        if filters.max_score is not None:
            params["max_score"] = repr(filters.max_score)
        if filters.sort != "time_desc":
            params["sort"] = filters.sort
        if filters.page != 1:
            params["page"] = str(filters.page)
        params["per_page"] = str(filters.per_page)
        if filters.sample_ids is not None:
            params["ids"] = ",".join(map(str, filters.sample_ids))
        return params


def _present(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None  # an empty form field means "no filter"


DATABASE_INTEGER_MAX = 2**63 - 1
"""Largest id or count a query parameter may carry (BIGINT on PostgreSQL, INTEGER on SQLite)."""

RowId = Annotated[int, Path(ge=1, le=DATABASE_INTEGER_MAX, description="Database id, from 1.")]
"""A sample or report id in a URL path: out-of-range values get a 422, never reach the database."""


def validation_failure(errors: Sequence[Mapping]) -> FilterError:
    """FastAPI's validation errors of a request (a path, query or body value of the wrong type)
    -> the FilterError of the first, worded like the parsers below: the API's documented 422 body
    (`detail` and `parameter`) for every bad value, whichever layer found it."""
    if not errors:
        return FilterError("request", "invalid request")
    first = errors[0]
    location = tuple(first.get("loc") or ("request",))
    # ("path", "sample_id"), ("query", "model"), ("body", "note"); ("body",) or ("body", 12) for the body itself.
    name = str(location[1]) if len(location) > 1 and isinstance(location[1], str) else str(location[0])
    kind, value, context = first.get("type", ""), first.get("input"), first.get("ctx") or {}
    shown = repr(value) if isinstance(value, str) else value
    if kind == "int_parsing":
        message = f"{shown} is not a whole number"
    elif kind in ("float_parsing", "float_type"):
        message = f"{shown} is not a number"
    elif kind == "greater_than_equal":
        message = f"must be at least {context.get('ge')}, got {value}"
    elif kind == "less_than_equal":
        message = f"must be at most {context.get('le')}, got {value}"
    elif kind == "missing":
        message = "required"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message = "expected a JSON object"
    elif kind == "json_invalid":
        message = f"not valid JSON ({context.get('error', 'decode error')})"
    elif kind == "literal_error":
        message = f"{shown} is not one of {context.get('expected')}"
    elif kind == "string_too_long":
        message = f"at most {context.get('max_length')} characters"
    else:
        message = str(first.get("msg") or "invalid value")
    return FilterError(name, message)


def parse_datetime(name: str, text: str | None) -> datetime | None:
    """ISO 8601 date or date-time; without an offset it is taken as UTC."""
    if text is None:
        return None
    candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    if "T" in candidate and " " in candidate:  # a '+' offset left unescaped in a URL arrives as a space
        candidate = candidate.replace(" ", "+")
    try:
        value = datetime.fromisoformat(candidate)
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except ValueError:
        raise FilterError(name, f"{text!r} is not an ISO 8601 date-time such as 2026-11-27T14:00 or 2026-11-27T14:00:00Z") from None
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before the first representable instant
        raise FilterError(name, f"{text!r} is outside the range of dates") from None


def parse_int(name: str, text: str | None, minimum: int | None = None, maximum: int | None = None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise FilterError(name, f"{text!r} is not a whole number") from None
    # Every number here ends in a 64-bit database integer: larger ones are refused, not a 500.
    minimum = -DATABASE_INTEGER_MAX if minimum is None else minimum
    maximum = DATABASE_INTEGER_MAX if maximum is None else min(maximum, DATABASE_INTEGER_MAX)
    if minimum is not None and value < minimum:
        raise FilterError(name, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise FilterError(name, f"must be at most {maximum}, got {value}")
    return value


def parse_predicted_class(name: str, text: str | None) -> int | None:
    """A predicted class index (the thresholds page's class selector); empty or 'global': None."""
    if text is None or text.strip() in ("", "global"):
        return None
    return parse_int(name, text.strip(), minimum=0, maximum=2**31 - 1)


def parse_page_window(limit: str | None, offset: str | None) -> tuple[int, int]:
    """The `limit` (1 to 500, default 50) and `offset` (default 0) of the API's list endpoints."""
    count = parse_int("limit", limit or None, minimum=1, maximum=500) or 50
    return count, parse_int("offset", offset or None, minimum=0) or 0

def parse_float(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise FilterError(name, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise FilterError(name, f"must be a finite number, got {text!r}")
    return value


def parse_choice(name: str, text: str | None, choices: tuple[str, ...], default: str) -> str:
    if text is None:
        return default
    for choice in choices:
        if text.lower() == choice.lower():
            return choice
    raise FilterError(name, f"{text!r} is not one of {', '.join(choices)}")


def reject_unknown(params: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        expected = f"expected one of {', '.join(allowed)}" if allowed else "this route takes no query parameters"
        raise FilterError(unknown[0], f"unknown parameter; {expected}")


def parse_queue_filters(params: Mapping[str, str], default_per_page: int) -> QueueFilters:
    """Validate the flagged-queue parameters (all optional); raises FilterError naming the first bad one."""
    reject_unknown(params, QUEUE_PARAMETERS)
    since = parse_datetime("since", _present(params, "since"))
    until = parse_datetime("until", _present(params, "until"))
    if since is not None and until is not None and since >= until:
        raise FilterError("until", f"must be after since ({since:%Y-%m-%d %H:%M} UTC)")
    min_score = parse_float("min_score", _present(params, "min_score"))
    max_score = parse_float("max_score", _present(params, "max_score"))
    if min_score is not None and max_score is not None and min_score > max_score:
        raise FilterError("max_score", f"must not be below min_score ({min_score:g})")
    return QueueFilters(
        since=since,
        until=until,
        predicted_class=parse_int("class", _present(params, "class"), minimum=0),
        labelled=parse_choice("labelled", _present(params, "labelled"), LABELLED_CHOICES, "any"),
        min_score=min_score,
        max_score=max_score,
        sort=parse_choice("sort", _present(params, "sort"), SORT_CHOICES, "time_desc"),
        page=parse_int("page", _present(params, "page"), minimum=1, maximum=1_000_000) or 1,
        per_page=parse_int("per_page", _present(params, "per_page"), minimum=1, maximum=MAX_PER_PAGE) or default_per_page,
        sample_ids=parse_sample_ids("ids", _present(params, "ids")),
    )


def parse_sample_ids(name: str, text: str | None) -> tuple[int, ...] | None:
    """Comma-separated sample ids (at most MAX_QUEUE_IDS), ascending without repeats; None when absent."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) > MAX_QUEUE_IDS:
        raise FilterError(name, f"at most {MAX_QUEUE_IDS} sample ids, got {len(parts)}")
    return tuple(sorted({parse_int(name, part, minimum=1) for part in parts}))


def parse_indicator(name: str, text: str | None, default: str) -> str:
    if text is None or not text.strip():
        return default
    if text not in INDICATORS:
        raise FilterError(name, f"{text!r} is not an indicator; expected one of {', '.join(INDICATORS)}")
    return text


def parse_window_hours(name: str, text: str | None, default: float) -> float:
    value = parse_float(name, text.strip() if text else None)
    if value is None:
        return default
    if not 0 < value <= 24 * 366:
        raise FilterError(name, f"must be between 0 and {24 * 366} hours, got {value:g}")
    return value
