"""The records database's schema migrations (Alembic), shipped with the package.

`Records.upgrade()` (stanch/stores/records.py) runs them; add a revision beside the others in
`versions/`, written by hand (it must not import `stanch.stores.records`: a migration is what
the schema was at its revision, frozen). `script.py.mako` is the template for a new one.
"""
