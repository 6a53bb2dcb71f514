"""Online garbage collection: blobs, chunks, upload sessions and old tombstones.

`treescale.gc.plan` decides what is garbage (pure functions); `treescale.gc.collector`
walks the cluster's records and relays at a bounded rate and removes it while the
registry keeps serving; `treescale.gc.command` is the ``treescale gc`` entry point.
"""
