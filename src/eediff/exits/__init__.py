from .policy import ExitPolicy, ScheduledExit
from .schedule import PRESETS, ExitSchedule, ScheduleError, get_schedule

__all__ = ["ExitPolicy", "ScheduledExit", "ExitSchedule", "ScheduleError", "PRESETS", "get_schedule"]
