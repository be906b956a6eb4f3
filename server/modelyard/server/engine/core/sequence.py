"""One generation request as the scheduler and the model runner see it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from modelyard.server.engine.core.blocks import BlockHash
from modelyard.server.engine.model.sampler import SamplingRow
from modelyard.server.engine.types import EngineEvent, GenerationRequest, TokenLogprob

# What a request's draft acceptance rate starts at, before any of its drafts is verified.
ACCEPTANCE_PRIOR = 0.5


@dataclass(eq=False, slots=True)
class Sequence:
    """A request's tokens, its KV blocks and how many of its tokens those blocks hold.

    ``tokens`` is prompt + generated. ``num_computed`` tokens have keys/values in ``block_ids``; the
    rest are fed to the next forward. A decoding request has exactly one token not computed (the last
    sampled one). Preemption drops the blocks and sets ``num_computed`` to 0: the request is prefilled
    again later over prompt + generated tokens, while ``row`` (penalties, seeded generator, grammar
    state) and the outputs already sent stay as they are.
    """

    key: int
    request: GenerationRequest
    sink: asyncio.Queue[object]
    row: SamplingRow
    tokens: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    aborted: bool = False
    finished: bool = False
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    # Chained names of the full blocks of ``tokens`` (computed lazily, kept across preemption).
    block_hashes: list[BlockHash] = field(default_factory=list)
    # How many of ``block_ids`` are registered in the prefix index (or were found there).
    num_registered: int = 0
    # Prompt tokens whose KV came from the prefix cache at first admission (reported in usage).
    num_cached_tokens: int = 0
    running: bool = False  # admitted: holds blocks (or is about to)
    num_preemptions: int = 0
    # Phase changes not yet sent: they leave with the request's next output.
    events: list[EngineEvent] = field(default_factory=list)
    # Speculative decoding: this step's draft tokens, fed after tokens[-1] and verified in one forward.
    draft: list[int] = field(default_factory=list)
    # Running share of draft tokens accepted, steps since a draft was last fed, and whether this
    # step's draft is a probe (``core/draft_gate.py``).
    draft_acceptance: float = ACCEPTANCE_PRIOR
    draft_idle: int = 0
    draft_probe: bool = False
    lora_id: int = 0  # the LoRA adapter the request runs under (0: the base model)
    # Seeds the prefix hash chain, so blocks computed under one adapter never serve another.
    cache_salt: bytes | None = None

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = list(self.request.prompt_token_ids) + list(self.request.output_token_ids)
            self.output_token_ids = list(self.request.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the KV cache: 1 while decoding, more while (re)prefilling."""
        return len(self.tokens) - self.num_computed

    @property
    def prefilling(self) -> bool:
        return self.num_pending > 1 or self.num_computed == 0

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs still to compute: asked for, and the first output not sent yet."""
        return (
            self.request.params.prompt_logprobs is not None
            and not self.output_token_ids
            and not (self.row.num_generated)
        )
