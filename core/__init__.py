"""What training and serving must agree on, shared by both: the model contract and image decoding
(and their command lines' one-line usage errors).

The bottom layer: it imports nothing of `registry`, `app` or `training` (import-linter checks it).
"""
