"""Which decoding rows feed their prompt-lookup drafts this step: speculative decoding's cost gate.

A draft is verified by feeding its tokens through a forward, and the drafted rows run a forward of their
own beside the plain rows'. On a CPU a forward's time grows with its token rows from a few rows up, so
drafts accepted at a low rate make a busy step slower per token: 16 streams of open questions (31% of
draft tokens accepted) ran at 0.71x without the gate, while one stream rewriting a JSON document (95%)
ran at 3.1x. Each request keeps a running acceptance rate of its drafts, and each step keeps the drafts
that raise the step's expected tokens per unit of forward cost. A request starts at an even chance,
enough for a lone request to draft at once and too little for a busy step; a request whose drafts were
dropped for a while is probed.

The cost of a forward over ``rows`` token rows is modelled as ``knee + rows`` (zero for no forward):
a fixed part (reading every weight once, launching the kernels) worth ``knee`` rows, then a share per
row. The decoder's matrices of the SmolLM-135M shape took 29 ms at 16 rows and 87 ms at 64 on the
2-core development machine (``bench/fast_decode_levers.py --part linear``): 1.2 ms per row over a fixed
9.7 ms, a knee of 8 rows. An accelerator streams its weights much faster than it fills its compute
units, so its knee is far larger and drafts pay at larger batches.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.server.engine.core.sequence import Sequence

CPU_KNEE_ROWS = 8
ACCELERATOR_KNEE_ROWS = 128
# Weight of the newest verified draft in a request's running acceptance rate.
ACCEPTANCE_WEIGHT = 0.3
# After this many steps with its drafts dropped, a request's next draft is judged as if it were sure to
# be accepted (a probe), and the probe's outcome replaces its rate: a request that missed early, or
# whose text turned repetitive later, or that started in a busy batch, gets measured again.
PROBE_AFTER_STEPS = 48


def knee_rows(device_type: str) -> int:
    return CPU_KNEE_ROWS if device_type == "cpu" else ACCELERATOR_KNEE_ROWS


def _cost(rows: int, knee: int) -> int:
    return knee + rows if rows else 0


def gate(decoding: Iterable[Sequence], knee: int) -> None:
    """Clear ``draft`` on the decoding rows whose drafts would lower the step's expected tokens per
    unit of forward cost; the most promising drafts (acceptance x length) are kept first."""
    rows = list(decoding)
    for seq in rows:
        seq.draft_probe = bool(seq.draft) and seq.draft_idle >= PROBE_AFTER_STEPS
    drafted = sorted((s for s in rows if s.draft), key=lambda s: _expected(s) * len(s.draft), reverse=True)
    if not drafted:
        return
    plain = len(rows)
    best_rate, best_kept = plain / _cost(plain, knee), 0
    fed = gained = 0.0
    for kept, seq in enumerate(drafted, start=1):
        plain -= 1
        fed += 1 + len(seq.draft)
        gained += 1 + _expected(seq) * len(seq.draft)
        rate = (plain + gained) / (_cost(plain, knee) + _cost(int(fed), knee))
        if rate > best_rate:
            best_rate, best_kept = rate, kept
    for seq in drafted[:best_kept]:
        seq.draft_idle = 0
    for seq in drafted[best_kept:]:
        seq.draft = []
        seq.draft_idle += 1
        seq.draft_probe = False


def _expected(seq: Sequence) -> float:
    return 1.0 if seq.draft_probe else seq.draft_acceptance


def observe(seq: Sequence, accepted: int) -> None:
    """Fold one verified draft (``accepted`` of ``len(seq.draft)`` tokens) into the request's rate."""
    if seq.draft:
        rate = accepted / len(seq.draft)
        if seq.draft_probe:
            seq.draft_acceptance, seq.draft_probe = rate, False
        else:
            seq.draft_acceptance += ACCEPTANCE_WEIGHT * (rate - seq.draft_acceptance)
