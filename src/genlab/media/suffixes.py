"""The file suffixes each modality reads, in one place: sources, `genlab prepare`, `genlab advise` and the verbs
that take files all ask here (lower case, with the dot)."""

from __future__ import annotations

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".jsonl"})
TABLE_SUFFIXES = frozenset({".csv", ".parquet", ".pq"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
