"""Stanch on Temporal: the client and data converter, payload encryption and its codec server,
search attributes, the dev server, and what activities are handed at worker start."""
