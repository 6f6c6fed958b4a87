#!/usr/bin/env python3
"""Call an upstream API with a credential from tokenvend, using only the
standard library.

    call(tokenvend, provider, url) gets the headers from tokenvend's REST API,
    calls url with them, and when the upstream answers 401 reports the
    credential to tokenvend and retries once with a fresh one.

Run it as a script to try it against `make run`:

    python3 tokenvend_call.py http://127.0.0.1:8080 kyc http://127.0.0.1:PORT/users/me

It prints the upstream's status and body. An API key, when tokenvend is
configured with callers, goes in the TOKENVEND_API_KEY environment variable.
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def _tokenvend(tokenvend, method, path, body=None):
    """One call to tokenvend's REST API; raises RuntimeError with the
    server's reason and message on an error."""
    headers = {"Accept": "application/json"}
    if os.environ.get("TOKENVEND_API_KEY"):
        headers["x-api-key"] = os.environ["TOKENVEND_API_KEY"]
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(tokenvend + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=35) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        # The error body is a google.rpc.Status: a message that says what
        # to do, and an ErrorInfo whose reason a program can branch on.
        status = json.load(e)
        reasons = [d.get("reason") for d in status.get("details", []) if "reason" in d]
        raise RuntimeError(f"tokenvend {e.code} {reasons}: {status.get('message')}") from None


def get_token(tokenvend, provider, scope="", subject=""):
    """The credential for provider: a dict with access_token and headers."""
    query = urllib.parse.urlencode({k: v for k, v in (("scope", scope), ("subject", subject)) if v})
    path = "/v1/providers/" + urllib.parse.quote(provider, safe="") + "/token"
    return _tokenvend(tokenvend, "GET", path + ("?" + query if query else ""))


def invalidate(tokenvend, provider, access_token, upstream_status, scope="", subject=""):
    """Report that the upstream refused access_token; True when tokenvend
    dropped it and started a new login."""
    body = {"provider": provider, "scope": scope, "subject": subject,
            "access_token": access_token, "upstream_status": upstream_status}
    return _tokenvend(tokenvend, "POST", "/v1/token:invalidate", body).get("invalidated", False)


def call(tokenvend, provider, url, method="GET", data=None, scope="", subject=""):
    """Call url with provider's credential; on 401, report it and retry once.
    Returns (status, body bytes)."""
    for attempt in (1, 2):
        tok = get_token(tokenvend, provider, scope, subject)
        req = urllib.request.Request(url, data=data, method=method, headers=tok["headers"])
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            if e.code != 401 or attempt == 2:
                return e.code, e.read()
            invalidate(tokenvend, provider, tok["access_token"], e.code, scope, subject)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: tokenvend_call.py TOKENVEND_URL PROVIDER UPSTREAM_URL")
    status, body = call(sys.argv[1], sys.argv[2], sys.argv[3])
    print(status)
    print(body.decode(errors="replace"))
