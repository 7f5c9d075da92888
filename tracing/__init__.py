"""Causal tracing and activation patching of factual recall (ROME, Meng et al. 2022),
built on the store's activation patching (:mod:`interlayer.store.patching`)."""

from .causal_trace import KINDS, TOKEN_GROUPS, CausalTrace, FactTrace, causal_trace, site_groups, trace_fact
from .facts import Fact, load_facts, packaged_facts, subject_positions

__all__ = ["CausalTrace", "Fact", "FactTrace", "KINDS", "TOKEN_GROUPS", "causal_trace", "load_facts",
           "packaged_facts", "site_groups", "subject_positions", "trace_fact"]
