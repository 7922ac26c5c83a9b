"""Loopback fakes of the outside world (TRON node, energy provider) for tests and `sweeper demo`.

They share one `World` (world.py): the provider's delegations show up in what the node serves.
"""
