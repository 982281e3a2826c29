#!/usr/bin/env python3
"""Force a build, wait for it, print its logs: as a script written for
Buildbot's API does it, unchanged against buildmaster.

    deploy/example/force-and-wait.py http://127.0.0.1:9011 passing --reason "release check"

Exits 0 when the build ends SUCCESS or WARNINGS, 1 otherwise. Where the
masters require a login, set BUILDMASTER_TOKEN to an API token (see the
README, "Log in"). Only the standard library: runs wherever Python 3 does.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

RESULTS = ["SUCCESS", "WARNINGS", "FAILURE", "SKIPPED", "EXCEPTION", "RETRY", "CANCELLED"]


def call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get("BUILDMASTER_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["BUILDMASTER_TOKEN"]
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = response.read()
    return payload if url.endswith("/raw") else json.loads(payload)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the API's base URL (HAProxy), e.g. http://127.0.0.1:9011")
    parser.add_argument("builder")
    parser.add_argument("--scheduler", default="force")
    parser.add_argument("--reason", default="forced by force-and-wait.py")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the build")
    args = parser.parse_args()
    api = args.url.rstrip("/") + "/api/v2"

    answer = call(f"{api}/forceschedulers/{args.scheduler}", {
        "jsonrpc": "2.0", "method": "force", "id": 1,
        "params": {"builderNames": [args.builder], "reason": args.reason},
    })
    if "error" in answer:
        sys.exit(f"force refused: {answer['error']['message']}")
    buildset_id, requests = answer["result"]
    request_id = next(iter(requests.values()))
    print(f"buildset {buildset_id}, build request {request_id}", file=sys.stderr)

    deadline = time.monotonic() + args.timeout
    while True:
        builds = call(f"{api}/builds?buildrequestid={request_id}&order=-buildid&limit=1")["builds"]
        # A build that lost its worker ends RETRY and the request runs again:
        # wait for the one that counts.
        if builds and builds[0]["complete"] and builds[0]["results"] != 5:
            build = builds[0]
            break
        if time.monotonic() > deadline:
            sys.exit(f"build request {request_id} did not finish within {args.timeout}s")
        time.sleep(0.5)

    for step in call(f"{api}/builds/{build['buildid']}/steps")["steps"]:
        for log in call(f"{api}/steps/{step['stepid']}/logs")["logs"]:
            print(f"--- step {step['number']} {step['name']}: {log['name']}", file=sys.stderr)
            sys.stdout.buffer.write(call(f"{api}/logs/{log['logid']}/raw"))
            sys.stdout.flush()
    result = RESULTS[build["results"]]
    print(f"build {build['number']} of {args.builder}: {result}", file=sys.stderr)
    sys.exit(0 if build["results"] in (0, 1) else 1)


if __name__ == "__main__":
    main()
