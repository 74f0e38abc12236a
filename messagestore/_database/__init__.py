"""The database layer: engines, the schema and its migrations, and all of the SQL.

Nothing above this package holds SQL or connections; nothing in it knows about buffering,
events or the services built on top.
"""
