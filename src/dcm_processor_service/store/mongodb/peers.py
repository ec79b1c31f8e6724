"""Peers in the platform's ``peers`` collection.

Fields: ``_id``, ``name``, ``aet``, ``host``, ``port``, ``tls``, ``whitelist_aet``,
``whitelist_ip`` (and ``cert_file``, ``key_file``, ``ca_file`` when set) - what the
platform's own peer records hold - plus, for a DICOMweb peer, one ``dicomweb``
sub-document (URL, auth kind, username, *reference* to the secret, TLS files), which the
platform's tools carry along unread. A peer is found by name or by ``_id``.
"""

from __future__ import annotations

from typing import Any

import pymongo
from bson import ObjectId

from ..records import Peer
from .connection import MongoConnection
from .layout import EXTRA, ORIGIN, id_values, now, oid, plain

__all__ = ["PeerDocuments"]

#: peer fields stored only when set
_PEER_OPTIONAL = ("cert_file", "key_file", "ca_file", "dicomweb")


class PeerDocuments(MongoConnection):
    """Peers (part of ``MongoStore``)."""

    @staticmethod
    def _peer(doc: dict[str, Any]) -> Peer:
        return Peer.from_dict({**doc, "_id": str(doc["_id"])})

    @staticmethod
    def _peer_selector(name_or_id: str) -> dict[str, Any]:
        return {"$or": [{"name": name_or_id}, {"_id": {"$in": id_values(name_or_id)}}]}

    def put_peer(self, peer: Peer) -> Peer:
        data = plain(peer.to_dict(), f"peer {peer.name!r}")
        data.pop("_id", None)
        unset = {k: "" for k in _PEER_OPTIONAL if data.get(k) is None}
        for key in unset:
            data.pop(key, None)
        stamp = now()
        update: dict[str, Any] = {
            "$set": {**data, f"{EXTRA}.updatedAt": stamp},
            "$setOnInsert": {
                "_id": oid(peer.id) if peer.id else ObjectId(),
                f"{EXTRA}.origin": ORIGIN,
                f"{EXTRA}.createdAt": stamp,
            },
        }
        if unset:
            update["$unset"] = unset

        def work(db: Any) -> dict[str, Any]:
            return dict(
                db.peers.find_one_and_update(
                    {"name": peer.name},
                    update,
                    upsert=True,
                    return_document=pymongo.ReturnDocument.AFTER,
                )
            )

        return self._peer(self._converging(f"peer {peer.name!r}", work))

    def get_peer(self, name_or_id: str) -> Peer:
        doc = self._run(lambda db: db.peers.find_one(self._peer_selector(name_or_id)))
        if doc is None:
            raise self._peer_not_found(name_or_id)
        return self._peer(doc)

    def list_peers(self) -> list[Peer]:
        docs = self._run(lambda db: list(db.peers.find().sort("name", pymongo.ASCENDING)))
        return [self._peer(d) for d in docs]

    def remove_peer(self, name_or_id: str) -> bool:
        return self._run(
            lambda db: db.peers.delete_many(self._peer_selector(name_or_id)).deleted_count > 0
        )
