"""The Picket controller: REST API, storage, assignment of monitors to agents, result ingest."""
