"""The activation store: ``collect``/``stream`` and their variants (:mod:`.collect`),
the capture of one pass with its edits (:mod:`.capture`), inputs and packing
(:mod:`.inputs`), row selections, and the on-disk activation cache (:mod:`.cache`,
:mod:`.cache_files`, :mod:`.shards`; several processes in :mod:`.cache_ranks`)."""

from .inputs import contexts_for_tokens, text_per_context

__all__ = ["contexts_for_tokens", "text_per_context"]
