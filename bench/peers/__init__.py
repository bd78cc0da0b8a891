"""Minimal peer apps serving the API's single-row customer read, one per connection strategy.

Each module exposes `app`, a Flask app with `GET /api/customers/<id>`, and registers in
`app.extensions["bench_pool"]` an object with `open()` and `close()`, which
`gunicorn_peer.conf.py` calls in each worker after the fork. No auth: the peers measure
the route and the query only.
"""
