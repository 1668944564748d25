"""Who is on duty: Uptrends' off-duty schedules, read in each operator's time zone.

An operator is on duty at an instant when `IsOnDuty` is set and the instant is outside every
one of the operator's off-duty periods. The periods are wall-clock times in the operator's
time zone (`TimeZoneId`; UTC when none is set), turned into instants with the zone's rules
for that day, so a daily 22:00-07:00 stays 22:00-07:00 local across a daylight-saving change
(and lasts an hour less or more that night):

- OneTime: from `StartDateTime` until `EndDateTime`.
- Daily: every day from `StartTime` until `EndTime`; Weekly: on `WeekDay`; Monthly: on
  `MonthDay` (in a shorter month, on its last day). An `EndTime` at or before the
  `StartTime` ends the next day (so equal times are a whole day).
- A wall time that does not exist that day (inside the spring-forward gap) is read with the
  offset before the change: 02:30 in Amsterdam on the last Sunday of March is 03:30 CEST.
  One that exists twice (the autumn fall-back) is its first occurrence.

Start instants are included, end instants are not.

`on_duty_operators` is what alerting asks: the operators of some operators and operator
groups who are on duty at an instant.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from controller import timezones

if TYPE_CHECKING:
    from controller.db.store import Store

MODES = ("OneTime", "Daily", "Weekly", "Monthly")
# .NET's DayOfWeek order, as Uptrends numbers them: Sunday is 0
WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_DAY = timedelta(days=1)


def _instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _weekday(day: date) -> int:
    return day.isoweekday() % 7  # Monday 1 ... Sunday 7 -> Sunday 0


@dataclass(frozen=True)
class OffDuty:
    """One off-duty schedule. Local times are naive: they are read in the operator's zone."""

    id: int
    mode: str
    start: datetime | None = None  # OneTime
    end: datetime | None = None
    week_day: int | None = None  # Weekly: 0 Sunday ... 6 Saturday
    month_day: int | None = None  # Monthly: 1 ... 31
    start_time: time | None = None  # Daily, Weekly, Monthly
    end_time: time | None = None

    def _occurs_on(self, day: date) -> bool:
        if self.mode == "Daily":
            return True
        if self.mode == "Weekly":
            return _weekday(day) == self.week_day
        if self.mode == "Monthly" and self.month_day is not None:
            last = calendar.monthrange(day.year, day.month)[1]
            return day.day == min(self.month_day, last)
        return False

    def period_starting(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
        """The period of a recurring schedule that starts on local `day`, as UTC instants."""
        if self.start_time is None or self.end_time is None or not self._occurs_on(day):
            return None
        end_day = day if self.end_time > self.start_time else day + _DAY
        return _instant(day, self.start_time, zone), _instant(end_day, self.end_time, zone)

    def covers(self, at: datetime, zone: ZoneInfo) -> bool:
        """Whether the (aware) instant `at` is inside this off-duty period."""
        moment = at.astimezone(UTC)
        if self.mode == "OneTime":
            if self.start is None or self.end is None:
                return False
            start = self.start.replace(tzinfo=zone).astimezone(UTC)
            end = self.end.replace(tzinfo=zone).astimezone(UTC)
            return start <= moment < end
        today = moment.astimezone(zone).date()
        # a period lasts at most a day (local): it started today or yesterday
        for day in (today - _DAY, today):
            period = self.period_starting(day, zone)
            if period is not None and period[0] <= moment < period[1]:
                return True
        return False


def _hhmm(value: time | None) -> str | None:
    return value.strftime("%H:%M") if value is not None else None


def off_duty_of(row: Mapping[str, Any]) -> OffDuty:
    """A schedule from its stored row."""

    def when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text) if text else None

    def hour(text: str | None) -> time | None:
        return time.fromisoformat(text) if text else None

    return OffDuty(
        id=int(row["id"]),
        mode=row["mode"],
        start=when(row["start_local"]),
        end=when(row["end_local"]),
        week_day=row["week_day"],
        month_day=row["month_day"],
        start_time=hour(row["start_time"]),
        end_time=hour(row["end_time"]),
    )


def stored(schedule: OffDuty) -> dict[str, Any]:
    """A schedule's columns (without its id)."""
    return {
        "mode": schedule.mode,
        "start_local": schedule.start.isoformat(timespec="seconds") if schedule.start else None,
        "end_local": schedule.end.isoformat(timespec="seconds") if schedule.end else None,
        "week_day": schedule.week_day,
        "month_day": schedule.month_day,
        "start_time": _hhmm(schedule.start_time),
        "end_time": _hhmm(schedule.end_time),
    }


def represent(schedule: OffDuty) -> dict[str, Any]:
    """Uptrends' OperatorDutySchedule: the fields of its mode only."""
    body: dict[str, Any] = {"Id": schedule.id, "ScheduleMode": schedule.mode}
    if schedule.mode == "OneTime":
        assert schedule.start is not None and schedule.end is not None
        body["StartDateTime"] = schedule.start.isoformat(timespec="seconds")
        body["EndDateTime"] = schedule.end.isoformat(timespec="seconds")
        return body
    if schedule.mode == "Weekly" and schedule.week_day is not None:
        body["WeekDay"] = WEEKDAYS[schedule.week_day]
    if schedule.mode == "Monthly":
        body["MonthDay"] = schedule.month_day
    body["StartTime"] = _hhmm(schedule.start_time)
    body["EndTime"] = _hhmm(schedule.end_time)
    return body


@dataclass(frozen=True)
class DutyOperator:
    """An operator as alerting needs it: contact details and duty."""

    guid: str
    full_name: str
    email: str | None
    backup_email: str | None
    mobile_phone: str | None
    is_on_duty: bool
    time_zone_id: int | None
    off_duty: tuple[OffDuty, ...] = field(default=())

    @property
    def zone(self) -> ZoneInfo:
        return timezones.zone_of(self.time_zone_id)

    def off_duty_at(self, at: datetime) -> OffDuty | None:
        """The first off-duty schedule covering `at`, if any."""
        zone = self.zone
        return next((s for s in self.off_duty if s.covers(at, zone)), None)

    def on_duty_at(self, at: datetime) -> bool:
        if at.tzinfo is None:
            raise ValueError("on_duty_at needs an aware datetime")
        return self.is_on_duty and self.off_duty_at(at) is None


async def on_duty_operators(
    store: Store,
    at: datetime,
    operator_guids: Iterable[str] = (),
    group_guids: Iterable[str] = (),
) -> list[DutyOperator]:
    """The operators named, and the members of the groups named (the Everyone group: every
    operator), who are on duty at the aware instant `at`; each once, by name. Unknown guids
    are skipped (a member deleted since)."""
    if at.tzinfo is None:
        raise ValueError("on_duty_operators needs an aware datetime")
    roster = await store.duty_roster(list(operator_guids), list(group_guids))
    return [op for op in roster if op.on_duty_at(at)]
