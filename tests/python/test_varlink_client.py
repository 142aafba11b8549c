#!/usr/bin/env python3
"""Drive cfsd with the reference Python varlink client (`pip install varlink`).

Usage: test_varlink_client.py ADDRESS [IDL]

ADDRESS is the daemon's socket, e.g. unix:/tmp/x/cfsd.sock; the daemon must
serve a repository directory that is NOT initialised yet. IDL is the
checked-in io.cfsd.Repository.varlink (default: ../../interfaces/ relative
to this script).

Opening an interface makes the library fetch and parse the interface
description the daemon serves, so every check below also checks that the
IDL is one a third-party implementation accepts. Prints each check; exits
non-zero with a message on the first failure.
"""

import json
import os
import socket
import sys

try:
    import varlink
except ImportError:
    sys.exit(
        "the Python `varlink` module is missing: install it with `pip install varlink`"
    )

REPOSITORY = "io.cfsd.Repository"
SERVICE = "org.varlink.service"
DEFAULT_ALGORITHM = "fsverity-sha512-12"


class CheckFailed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise CheckFailed(what)


def passed(what):
    print(f"ok: {what}", flush=True)


def expect_error(name, call, *args, **kwargs):
    """Run call(*args, **kwargs), which must fail with varlink error `name`;
    return the error's parameters."""
    try:
        reply = call(*args, **kwargs)
    except varlink.VarlinkError as e:
        check(
            e.error() == name,
            f"expected {name}, got {e.error()} with {e.parameters()}",
        )
        return e.parameters()
    raise CheckFailed(f"expected {name}, got the reply {reply!r}")


def raw_call(address, message):
    """Send one call on a fresh connection, bypassing the library's own
    knowledge of the interface, and return the daemon's reply as parsed
    by the library (a dict, or the VarlinkError it stands for)."""
    path = address.removeprefix("unix:")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(json.dumps(message).encode() + b"\0")
        data = b""
        while not data.endswith(b"\0"):
            chunk = s.recv(8192)
            if not chunk:
                raise CheckFailed(f"the daemon closed the connection on {message}")
            data += chunk
    reply = json.loads(data[:-1])
    if reply.get("error"):
        return varlink.VarlinkError.new(reply)
    return reply


def check_service(client, idl_text):
    with client.open(SERVICE) as service:
        info = service.GetInfo()
        for interface in (SERVICE, REPOSITORY):
            check(
                interface in info["interfaces"],
                f"GetInfo does not list {interface}: {info['interfaces']}",
            )
        passed(f"GetInfo lists {SERVICE} and {REPOSITORY} ({info['product']} {info['version']})")

        description = service.GetInterfaceDescription(REPOSITORY)["description"]
        check(
            description == idl_text,
            f"the description of {REPOSITORY} differs from the checked-in IDL",
        )
        passed(f"GetInterfaceDescription({REPOSITORY}) is the checked-in IDL, byte for byte")

        params = expect_error(
            "org.varlink.service.InterfaceNotFound",
            service.GetInterfaceDescription,
            "io.cfsd.NoSuchInterface",
        )
        check(
            params.get("interface") == "io.cfsd.NoSuchInterface",
            f"InterfaceNotFound names the wrong interface: {params}",
        )
        passed("GetInterfaceDescription of an unknown interface: InterfaceNotFound")


def check_repository(client, repo_path):
    # Parsing the served description happens here.
    with client.open(REPOSITORY) as repo:
        passed(f"the library parsed the served {REPOSITORY} description")

        params = expect_error(f"{REPOSITORY}.NotInitialized", repo.Info)
        check("path" in params, f"NotInitialized carries no path: {params}")
        passed(f"Info before Init: NotInitialized (path {params['path']})")

        # An unknown algorithm is refused before anything is created.
        params = expect_error(f"{REPOSITORY}.UnsupportedAlgorithm", repo.Init, algorithm="md5")
        check(params.get("algorithm") == "md5", f"wrong parameters: {params}")
        passed("Init(algorithm='md5') on a fresh directory: UnsupportedAlgorithm")
        expect_error(f"{REPOSITORY}.NotInitialized", repo.Info)
        passed("the refused Init created nothing")

        reply = repo.Init()
        check(reply["created"] is True, f"Init did not create the repository: {reply}")
        check(
            reply["info"]["algorithm"] == DEFAULT_ALGORITHM,
            f"Init chose {reply['info']['algorithm']}, not {DEFAULT_ALGORITHM}",
        )
        passed(f"Init() created a {DEFAULT_ALGORITHM} repository")

        info = repo.Info()["info"]
        check(info["algorithm"] == DEFAULT_ALGORITHM, f"Info: {info}")
        if repo_path is not None:
            check(info["path"] == repo_path, f"Info names {info['path']}, not {repo_path}")
        verity = info["verity"]
        if verity["enforced"]:
            check(verity.get("reason") is None, f"enforced verity with a reason: {verity}")
        else:
            check(
                "fs-verity" in (verity.get("reason") or ""),
                f"verity is not enforced and the reason does not say why: {verity}",
            )
        for usage in ("objects", "streams", "images"):
            check(
                info[usage] == {"count": 0, "bytes": 0},
                f"a new repository has {usage}: {info[usage]}",
            )
        passed(f"Info: {info['algorithm']}, verity {verity}")

        reply = repo.Init()
        check(reply["created"] is False, f"a second Init created again: {reply}")
        passed("Init() again: created = false")

        params = expect_error(f"{REPOSITORY}.AlgorithmMismatch", repo.Init, algorithm="sha256")
        check(params.get("existing") == DEFAULT_ALGORITHM, f"wrong existing: {params}")
        check(
            params.get("requested") in ("sha256", "fsverity-sha256-12"),
            f"wrong requested: {params}",
        )
        check("path" in params, f"AlgorithmMismatch carries no path: {params}")
        passed(
            f"Init(algorithm='sha256'): AlgorithmMismatch "
            f"(existing {params['existing']}, requested {params['requested']})"
        )

        params = expect_error(f"{REPOSITORY}.UnsupportedAlgorithm", repo.Init, algorithm="md5")
        passed("Init(algorithm='md5') on the sha512 repository: UnsupportedAlgorithm")

        # The connection is still usable after errors.
        check(repo.Info()["info"] == info, "Info changed after refused calls")
        passed("the connection still serves calls after errors")

        # The library knows the interface: an undeclared method is not even
        # sent.
        check(not hasattr(repo, "NoSuchMethod"), "the client invented a method")
        passed("the client offers only the methods the served IDL declares")


def check_unknown_names(address):
    # Sent raw, the daemon itself must answer with the standard errors.
    method = f"{REPOSITORY}.NoSuchMethod"
    error = raw_call(address, {"method": method})
    check(
        isinstance(error, varlink.VarlinkError)
        and error.error() == "org.varlink.service.MethodNotFound",
        f"calling {method}: {error}",
    )
    check(
        error.parameters().get("method") in (method, "NoSuchMethod"),
        f"MethodNotFound names the wrong method: {error.parameters()}",
    )
    passed(f"{method}: MethodNotFound from the daemon")

    error = raw_call(address, {"method": "io.cfsd.NoSuchInterface.Method"})
    check(
        isinstance(error, varlink.InterfaceNotFound),
        f"calling io.cfsd.NoSuchInterface.Method: {error}",
    )
    check(
        error.parameters().get("interface") == "io.cfsd.NoSuchInterface",
        f"InterfaceNotFound names the wrong interface: {error.parameters()}",
    )
    passed("io.cfsd.NoSuchInterface.Method: InterfaceNotFound from the daemon")


def check_open_unknown_interface(client):
    try:
        client.open("io.cfsd.NoSuchInterface")
    except varlink.InterfaceNotFound as e:
        check(
            e.parameters().get("interface") == "io.cfsd.NoSuchInterface",
            f"wrong parameters: {e.parameters()}",
        )
        passed("opening an unknown interface: InterfaceNotFound")
        return
    raise CheckFailed("opening an unknown interface succeeded")


def main():
    if len(sys.argv) not in (2, 3, 4):
        sys.exit(f"usage: {sys.argv[0]} unix:/path/to/socket [IDL [REPO]]")
    address = sys.argv[1]
    if not address.startswith("unix:"):
        sys.exit(f"not a unix: address: {address}")
    here = os.path.dirname(os.path.abspath(__file__))
    idl_path = (
        sys.argv[2]
        if len(sys.argv) >= 3
        else os.path.join(here, "..", "..", "interfaces", f"{REPOSITORY}.varlink")
    )
    repo_path = sys.argv[3] if len(sys.argv) == 4 else None
    with open(idl_path, encoding="utf-8") as f:
        idl_text = f.read()

    try:
        with varlink.Client(address=address) as client:
            check_service(client, idl_text)
            check_repository(client, repo_path)
            check_open_unknown_interface(client)
        check_unknown_names(address)
    except CheckFailed as e:
        sys.exit(f"FAILED: {e}")
    print("all checks passed")


if __name__ == "__main__":
    main()
