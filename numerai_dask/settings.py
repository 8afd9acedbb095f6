"""Settings a person gives, as options or job-file keys: the error a wrong one raises, and the checks they share.

Which setting is wrong travels with the error (:class:`InvalidSetting`), so
the command line can name its option (and exit 2, a usage error) and a job
file its table and key, from the one check each value passes.
"""

from __future__ import annotations

import math


class InvalidSetting(ValueError):
    """A setting whose value cannot be used: ``key`` is its name as a job file writes it, ``problem`` what is
    wrong with the value, without the name."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    def __reduce__(self) -> tuple:
        return type(self), (self.key, self.problem)


def require(condition: bool, key: str, problem: str) -> None:
    """Raise :class:`InvalidSetting` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise InvalidSetting(key, problem)


def is_count(value: object) -> bool:
    """Whether ``value`` is a whole number of at least 1, not a bool (which Python and TOML count as numbers)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_count(value: object, key: str) -> None:
    """``value`` must be a whole number of at least 1 (:func:`is_count`)."""
    require(is_count(value), key, f"must be a whole number of at least 1, got {value!r}{quotes_hint(value)}")


def quotes_hint(value: object) -> str:
    """For text that reads as a number, what is wrong with it: a job file's quotes made it text (``"0.5"``)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        return " (text: write the number without quotes)" if math.isfinite(number) else ""
    return ""


def require_finite_number(value: object, key: str) -> None:
    """``value`` must be a finite int or float (:func:`is_finite_number`)."""
    require(is_finite_number(value), key, f"must be a finite number, got {value!r}{quotes_hint(value)}")


def require_positive(value: object, key: str) -> None:
    """``value`` must be a finite number above 0."""
    require(is_finite_number(value) and value > 0, key, f"must be a positive number, got {value!r}{quotes_hint(value)}")


def require_between(value: object, key: str, low: float, high: float) -> None:
    """``value`` must be a finite number from ``low`` to ``high``."""
    require(is_finite_number(value) and low <= value <= high, key,
            f"must be between {low:g} and {high:g}, got {value!r}{quotes_hint(value)}")
