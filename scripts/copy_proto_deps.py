"""Copy the google/api protos that TAI's protos import from the installed
googleapis-common-protos package into a build folder, so protoc and buf work offline."""

import shutil
import sys
from pathlib import Path

import google.api.annotations_pb2 as annotations


def main() -> None:
    root = Path(sys.argv[1])
    google = Path(annotations.__file__).parent.parent
    # google/api: the HTTP annotations. google/rpc: the error details the services send, which
    # the gateway's JSON transcoder must know to render errors as JSON.
    for package, names in (
        ("api", ("annotations.proto", "http.proto")),
        ("rpc", ("status.proto", "error_details.proto")),
    ):
        target = root / "google" / package
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(google / package / name, target / name)


if __name__ == "__main__":
    main()
