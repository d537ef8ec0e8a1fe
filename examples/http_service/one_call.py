"""One request in its own process (the service's "subprocess" mode):

    python3 one_call.py SNAPSHOT_FILE FUNCTION < body

reads the request body on stdin, makes a sandbox from the snapshot file, calls FUNCTION
and writes {"status": ..., "body": ...} on stdout, the answer the service sends."""
import json
import sys

from service import HOST_FUNCTIONS, call_answer, signatures

import hlsandbox as hl


def main() -> None:
    snapshot_file, name = sys.argv[1], sys.argv[2]
    body = sys.stdin.buffer.read()
    with hl.Snapshot.load(snapshot_file) as snap, \
            hl.MultiUseSandbox.from_snapshot(snap, host_functions=HOST_FUNCTIONS) as sb:
        status, answer = call_answer(signatures(snap), name, body,
                                     lambda n, args: sb.call(n, *args, timeout=1.0))
    json.dump({"status": status, "body": answer}, sys.stdout)


if __name__ == "__main__":
    main()
