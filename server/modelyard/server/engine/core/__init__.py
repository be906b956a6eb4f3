"""What decides what runs: the scheduler, the block manager and prefix index, the per-request sequences,
the tokens one step emitted, the stop rules applied to each sampled token, and the prompt-lookup draft
proposer of speculative decoding.

Nothing here runs a forward pass: each step is planned as plain data (which rows prefill how many
tokens, which decode, which blocks they hold) that ``model/`` turns into compute. The one link the
other way is ``Sequence.row``, the sampler's per-request state (``model.sampler.SamplingRow``).
"""
