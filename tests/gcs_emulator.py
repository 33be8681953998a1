"""A local Cloud Storage server for the gs:// tests: PyPI's gcp-storage-emulator, in memory, with the
two parts of the GCS contract that TensorStore relies on and the emulator lacks added on top:
- downloads carry the object's generation in `x-goog-generation` (TensorStore reads every object's
  generation from that header; without it OCDBT checkpoints fail with "Malformed StorageGeneration");
- uploads honour `ifGenerationMatch` (412 when the precondition fails; 0 = "must not exist"), which
  OCDBT uses to commit its manifest.

    python tests/gcs_emulator.py PORT BUCKET     # serves until killed; prints "ready" when it is

Clients are pointed at it by environment (`client_env`): STORAGE_EMULATOR_HOST (gcsfs,
google-cloud-storage), TENSORSTORE_GCS_HTTP_URL + GOOGLE_AUTH_TOKEN_FOR_TESTING (TensorStore),
CLOUD_STORAGE_EMULATOR_ENDPOINT (google-cloud-cpp, under ArrayRecord's gs:// reader), and
EPATH_USE_TF=0 so etils.epath takes gcsfs even where TensorFlow is installed (tf.io.gfile has no
emulator setting; a TPU VM without TensorFlow takes gcsfs too).
"""
from __future__ import annotations

import logging
import sys
import time
from http import HTTPStatus

BUCKET = "mvd-test-bucket"  # the bucket the tests' `gcs` fixture creates


def client_env(port: int) -> dict:
    url = f"http://localhost:{port}"
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "EPATH_USE_TF": "0"}


def _generation(storage, request):
    from gcp_storage_emulator.exceptions import NotFound

    try:
        return storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])["generation"]
    except (NotFound, KeyError):
        return None


def _with_generation_header(download):
    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        generation = _generation(storage, request)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT) and generation is not None:
            response["x-goog-generation"] = generation
    return handler


def _with_precondition(upload):
    def handler(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        name = (request.query.get("name") or [None])[0]
        if wanted and name:
            from gcp_storage_emulator.exceptions import NotFound

            try:
                current = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
            except NotFound:
                current = "0"
            if str(current) != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return
        upload(request, response, storage, *args, **kwargs)
    return handler


def start(port: int, bucket: str):
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # "Resource not found" is normal
    # Replaced both in the route table and as module attributes (objects.get calls download by name for
    # ?alt=media; the router falls back to objects.insert for uploads without the /upload prefix).
    wrapped = {objects.download: _with_generation_header(objects.download),
               objects.insert: _with_precondition(objects.insert)}
    for _, handlers in emulator.HANDLERS:
        for method, fn in list(handlers.items()):
            handlers[method] = wrapped.get(fn, fn)
    objects.download, objects.insert = wrapped[objects.download], wrapped[objects.insert]
    srv = emulator.create_server("localhost", port, in_memory=True, default_bucket=bucket)
    srv.start()
    return srv


if __name__ == "__main__":
    start(int(sys.argv[1]), sys.argv[2])
    print("ready", flush=True)
    while True:
        time.sleep(3600)
