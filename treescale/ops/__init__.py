"""What an operator sees of a node: metrics, health, JSON logs and notifications.

Nothing here imports the registry, the store or the bus: they call into this package
(or are watched by it at scrape time), never the other way round.
"""
