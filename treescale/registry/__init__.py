"""The registry: the OCI Distribution Spec v2 HTTP API over a `Storage`.

- `app`: the Klein application (`Registry`) and the site serving it (`make_site`).
- `request`: the request class that streams upload bodies as they arrive.
- `uploads`: the upload sessions in progress.
- `manifests`, `names`, `ranges`, `routes`: pure parsing and validation.
- `errors`: the spec's error codes and the one writer of error bodies.
"""
