"""Durations as written in YAML: ``{days: 7, hours: 0, minutes: 20}``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Duration(BaseModel):
    """A non-negative length of time made of days, hours, minutes and seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    days: int = Field(default=0, ge=0)
    hours: int = Field(default=0, ge=0)
    minutes: int = Field(default=0, ge=0)
    seconds: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_timedelta(cls, data: Any) -> Any:
        if isinstance(data, timedelta):
            return cls.from_timedelta(data).model_dump()
        if data is None:
            return {}
        return data

    @classmethod
    def from_timedelta(cls, value: timedelta) -> Duration:
        if value < timedelta(0):
            raise ValueError("a duration cannot be negative")
        total = int(value.total_seconds())
        days, rest = divmod(total, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        return cls(days=days, hours=hours, minutes=minutes, seconds=seconds)

    @property
    def timedelta(self) -> timedelta:
        return timedelta(days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds)

    @property
    def total_seconds(self) -> int:
        return int(self.timedelta.total_seconds())

    @property
    def words(self) -> str:
        """The duration in words, for messages: ``30 days``, ``1 day 6 hours``, ``0 seconds``."""
        parts = [f"{v} {u}{'s' if v != 1 else ''}" for v, u in ((self.days, "day"), (self.hours, "hour"),
                                                               (self.minutes, "minute"), (self.seconds, "second")) if v]
        return " ".join(parts) or "0 seconds"

    def __str__(self) -> str:
        parts = [f"{v}{u}" for v, u in ((self.days, "d"), (self.hours, "h"), (self.minutes, "m"),
                                         (self.seconds, "s")) if v]
        return "".join(parts) or "0"
