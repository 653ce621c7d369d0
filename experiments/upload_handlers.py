"""Uploads hashed as they arrive, so that storing one costs no second pass over its bytes.

Django writes a large upload to a temporary file while it parses the multipart body; this handler
also feeds each chunk to SHA-256 on the way. The dataset service then moves the temporary file into
place (a rename on the same filesystem) instead of reading it again to hash and copy it: one pass
over each uploaded byte instead of three (bench/bench_load.py: twenty 50 MB uploads at once).
"""

from __future__ import annotations

import hashlib

from django.core.files.uploadhandler import TemporaryFileUploadHandler

from . import pacing


class HashingTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.digest = hashlib.sha256()

    def receive_data_chunk(self, raw_data: bytes, start: int):
        pacing.step_aside()  # in the upload helper: paced while its web process's pages wait for a CPU
        self.digest.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size: int):
        file = super().file_complete(file_size)
        file.sha256 = self.digest.hexdigest()
        return file
