#!/usr/bin/env python3
"""A real S3-compatible server for the versioning tests: moto in server mode.

Listens on 127.0.0.1 on a free port and prints `PORT <n>` on stdout once it accepts connections.
It exits when its stdin closes, so it never outlives the test process that started it.
Buckets, bucket versioning, object versions, multipart uploads and tags behave as on S3.

Requires: pip install 'moto[server]==5.1.*'
"""

import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


def main():
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # moto builds some URLs from MOTO_PORT; it reads it per request.
    os.environ["MOTO_PORT"] = str(server.server_port)

    def exit_when_parent_goes():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_when_parent_goes, daemon=True).start()
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
