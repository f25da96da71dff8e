"""ONVIF camera driver (onvif-zeep-async): device, media, snapshots, pull-point and push events.

Layers, lowest first:

* :mod:`.topics` -- pure mapping of event topics to :class:`CameraEvent` (no I/O);
* :mod:`.errors` -- the exception tree and the translation of library exceptions;
* :mod:`.camera` -- :class:`OnvifCamera`: connection, device information, media, snapshots;
* :mod:`.events` -- :class:`PullPointSubscriber`: the event subscription state machine;
* :mod:`.notify` -- :class:`NotifySubscriber` and :class:`NotifyListener`: the same events
  pushed by the camera (WS-BaseNotification Notify) instead of pulled.
"""

from .camera import DeviceInfo, OnvifCamera, Profile
from .errors import (
    CameraAuthError,
    CameraError,
    CameraProtocolError,
    CameraTimeout,
    CameraUnreachable,
)
from .events import (
    EventSubscriber,
    PullPointSubscriber,
    SubscriberHealth,
    SubscriberState,
    SubscriberTiming,
)
from .notify import NotifyListener, NotifySubscriber
from .topics import CameraEvent, EventKind, UnknownTopicLog, map_event

__all__ = [
    "CameraAuthError",
    "CameraError",
    "CameraEvent",
    "CameraProtocolError",
    "CameraTimeout",
    "CameraUnreachable",
    "DeviceInfo",
    "EventKind",
    "EventSubscriber",
    "NotifyListener",
    "NotifySubscriber",
    "OnvifCamera",
    "Profile",
    "PullPointSubscriber",
    "SubscriberHealth",
    "SubscriberState",
    "SubscriberTiming",
    "UnknownTopicLog",
    "map_event",
]
