"""Sending mail through the service: the core shared by the HTTP routes and the SMTP submission server."""

from __future__ import annotations

from service.sending.core import Delivery, SendingCore
from service.sending.pool import Pool
from service.sending.store import DeliveryLog

__all__ = ["Delivery", "DeliveryLog", "Pool", "SendingCore"]
