"""Canonical indicator names, shared by the science, the store, the stream and the web.

Kept free of torch so that the storage and web layers can import it cheaply.
"""

INDICATORS: tuple[str, ...] = (
    "MP",
    "H",
    "T1000",
    "ODIN",
    "NORM",
    "NORM+",
    "ANG",
    "ANG++",
    "PROJ",
    "ACT",
    "ACT+",
    "IN-DMS",
    "IN-DMS-AOS",
    "IN-DSS",
    "IN-DSS-EXT",
    "DMS",
    "DMS-AOS",
    "DSS",
    "DSS-EXT",
    "1C-Sum",
)

SUMMARY = "1C-Sum"

# Paper section 4: 1C-Sum sums every available indicator except the IN- ones and ODIN.
SUMMARY_MEMBERS_EXCLUDED: frozenset[str] = frozenset(
    {"ODIN", "IN-DMS", "IN-DMS-AOS", "IN-DSS", "IN-DSS-EXT", SUMMARY}
)


def column_name(indicator: str) -> str:
    """SQL/CSV-safe column name of an indicator: 'ANG++' -> 'ang_pp', '1C-Sum' -> 'one_c_sum'."""
    if indicator not in INDICATORS:
        raise KeyError(f"unknown indicator {indicator!r}; expected one of {', '.join(INDICATORS)}")
    name = indicator.lower().replace("1c-sum", "one_c_sum").replace("++", "_pp").replace("+", "_p")
    return name.replace("-", "_")


COLUMNS: dict[str, str] = {name: column_name(name) for name in INDICATORS}
