"""The child process that runs python graders' `grade(sample, item)`: one per `Graders.grade` call.

Standard library only (it runs as `python -I python_worker.py`). It reads one JSON request on stdin,
{"graders": [{"name", "source"}], "rows": [{"sample", "item"}]}, and answers on its stdout one JSON line
per event: {"ready": true} once every grader's source ran, then per row and grader {"score": x} or
{"error": {...}}, stopping at the first error. The user's prints go to stderr (the parent keeps them in a
file), so they cannot corrupt the answer. The parent times each line, so a grader stuck in a loop is
killed with its row named. Sockets are refused before any user code runs: a best-effort block of
the socket module (the standard library's way in), not an operating-system sandbox.
"""

import json
import linecache
import math
import os
import socket
import sys
import traceback


def _refuse(*args, **kwargs):
    raise PermissionError("network access is disabled inside python graders")


class _RefusedSocket:
    def __new__(cls, *args, **kwargs):
        _refuse()


def block_network():
    import _socket

    for module in (socket, _socket):
        module.socket = _RefusedSocket
    for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
                 "socketpair", "fromfd"):
        setattr(socket, name, _refuse)


def _where(name):
    return f"<python grader {name!r}>"


def load(grader):
    """The grader's `grade` function; its source registered with linecache so tracebacks show its lines."""
    filename = _where(grader["name"])
    source = grader["source"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": f"python_grader_{len(linecache.cache)}"}
    exec(compile(source, filename, "exec"), namespace)
    grade = namespace.get("grade")
    if not callable(grade):
        raise TypeError("its source defines no function grade(sample, item)")
    return grade


def _user_traceback(err, filename):
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(err), err)
    return "".join(lines).rstrip()


def _error(kind, grader, row, err=None, message=None):
    text = message or f"{type(err).__name__}: {err}"
    tb = _user_traceback(err, _where(grader)) if err is not None else ""
    return {"error": {"kind": kind, "grader": grader, "row": row, "message": text, "traceback": tb}}


def main():
    request = json.load(sys.stdin)
    answer = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the user's prints (and a C library's) go to stderr
    sys.stdout = sys.stderr

    def send(message):
        answer.write(json.dumps(message) + "\n")

    block_network()
    graders = []
    for grader in request["graders"]:
        try:
            graders.append((grader["name"], load(grader)))
        except BaseException as err:  # a user's source may raise anything, SystemExit included
            send(_error("load", grader["name"], None, err))
            return
    send({"ready": True})
    for index, row in enumerate(request["rows"]):
        for name, grade in graders:
            try:
                value = grade(row["sample"], row["item"])
            except BaseException as err:
                send(_error("raised", name, index, err))
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                send(_error("returned", name, index, message=f"grade() returned {value!r}, not a finite number"))
                return
            send({"score": float(value)})


if __name__ == "__main__":
    main()
