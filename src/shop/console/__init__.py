"""Pages a person opens in a browser, served by the app itself (no CDN: they work offline).

- `/admin`: the operator console (console.py, static/console.*), a static page over the admin API.
- `/schema`: the interactive API reference (reference.py), Swagger UI over `/schema/openapi.json`.

`shop run` serves both, `shop serve` the reference, `shop gateway` both (over the merged document
and the admin API of the services behind it).
"""
