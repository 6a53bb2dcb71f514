"""Who may do what: logins, tokens and per-repository rules for the registry.

The core is sans-IO; only `endpoint` touches twisted.web.

- `settings`: the ``[auth]`` table of the topology file, checked into frozen values.
- `scopes`: the ``type:name:actions`` scopes of the Docker token flow.
- `headers`: the ``Authorization`` header read, ``WWW-Authenticate`` challenges written.
- `htpasswd`: a bcrypt htpasswd file of users, re-read when it changes.
- `policy`: what rules, groups and anonymous pull grant to a user.
- `keys`: loading (and creating) the keys tokens are signed and checked with.
- `tokens`: issuing and verifying signed JWTs with repository scopes.
- `authenticator`: one decision per request: allowed, or why not and what to ask.
- `tokenserver`: the token endpoint's logic, from query to JSON answer.
- `endpoint`: the token endpoint as a twisted.web resource.
"""
