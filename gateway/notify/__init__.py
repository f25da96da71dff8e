"""People told of alarms (issue 13, part 4): e-mail, SMS gateway, messaging webhooks; escalation.

:class:`~gateway.notify.notifier.Notifier` turns each new alarm into durable jobs in the
``notifications`` table, sends them by each recipient's channels in order (retries, then the next
channel), and escalates to the next person when nobody acknowledged in time.
"""

from gateway.notify.notifier import Notifier

__all__ = ["Notifier"]
