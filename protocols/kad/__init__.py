"""Kademlia DHT (``/ipfs/kad/1.0.0``): codec, routing table, lookups, records, service."""
