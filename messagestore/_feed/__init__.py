"""The change feed: revisions, resumable subscriptions, events from every process.

The database is the log and the brokers its fast path. ``_feed`` publishes every committed
change once, in revision order; ``_subscription`` replays from a revision and continues live;
``_listen`` hears other processes' commits; ``_retention`` prunes old tombstones.
"""
