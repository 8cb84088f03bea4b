"""The mask broker (the seed's mask server 30): keeps each home's sealed mask seed per round and
answers the coordinator's group requests with group mask sums, as the privacy gatekeeper.

core.py (the state machine) and release.py (the release rule) are pure; service.py is the MQTT
adapter, state_dir.py the --state-dir files; docs/privacy.md explains what it protects and how.
"""

from .core import MaskBroker, Publish, Record
from .release import Partition

__all__ = ["MaskBroker", "Partition", "Publish", "Record"]
