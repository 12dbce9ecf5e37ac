"""Adapters: one per boundary (AMI, MQTT bus, SQLite store, directory)."""
