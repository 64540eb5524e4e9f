"""The bottom layer: pieces every other part of lesionlab may use, and which import nothing else of lesionlab.

- :mod:`lesionlab.core.console`: the rich console of every command (readable tables in log files).
- :mod:`lesionlab.core.errors`: ``LesionlabError``, the base of every error a user can cause and fix.
- :mod:`lesionlab.core.io`: atomic writes (with fsync), JSON-safe conversion, file hashing.
- :mod:`lesionlab.core.paths`: the shared folder and the cache folder.
- :mod:`lesionlab.core.version`: the package version.
"""
