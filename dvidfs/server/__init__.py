"""`dvidfs serve`: DVID's HTTP API as a third front end over the core.

Layout: `http.py` (requests, responses, the one error -> status table),
`routes.py` (the URL tree and the per-type endpoint registry), `app.py` (the
ASGI application: body limits, worker threads, CORS), `run.py` (hypercorn on
trio, beside an optional FUSE mount), and one module of handlers per area:
`repos.py` (server, repos, nodes), `volumes.py` (voxels of uint8blk and
labelmap), `labelmap.py` (bodies, edits and ids), `keyvalue.py`, `roi.py`,
`annotation.py` (also labelsz), `precomputed.py` (neuroglancer's static
layout), and `transfer.py` (dvidfs-only: push/pull between dvidfs stores).  Handlers are plain
functions of a `Request`, run in worker threads; they talk only to the core.
"""
