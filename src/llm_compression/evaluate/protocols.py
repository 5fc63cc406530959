"""Perplexity protocol presets; they live in :mod:`llm_compression.protocols` (torch-free, so the
workflow can plan with them) and are re-exported here for the evaluation code."""

from ..protocols import (  # noqa: F401
    C4_DOCUMENTS,
    C4_WINDOWS,
    LLM_PRUNER_SEQLEN,
    PRESETS,
    PerplexityProtocol,
    ProtocolError,
    expected_windows,
    model_context_length,
    resolve_protocol,
)
