"""Google Cloud: the document store on Firestore (`FirestoreStore`) and the event bus on Pub/Sub
(`PubSubBus`); both also run against the emulators."""

from tai_common.gcp.bus import PubSubBus
from tai_common.gcp.store import FirestoreStore

__all__ = ["FirestoreStore", "PubSubBus"]
