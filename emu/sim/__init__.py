"""Virtual time and the deterministic event scheduler that drives every device."""

from emu.sim.scheduler import NS_PER_SECOND, Event, Scheduler, SettleError, seconds

__all__ = ["Scheduler", "Event", "NS_PER_SECOND", "SettleError", "seconds"]
