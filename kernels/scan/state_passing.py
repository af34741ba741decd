"""Passing the chunk-local states across chunks, in place.

states (BH, nchunks, P*N) fp32 hold each chunk's local state; carry (BH, nchunks) its carry
factor (chunk_state.py). Afterwards states[c] holds the state ENTERING chunk c from its
neighbour: from the left (TO_RIGHT) or from the right (TO_RIGHT=False, walking the chunks from
right to left):
    in_0 = 0,  in_{c+1} = local_c + carry_c * in_c          (TO_RIGHT)
    in_last = 0,  in_{c-1} = local_c + carry_c * in_c       (leftwards)
where carry_c = RESET (a sequence starts between the chunks) gives in = local_c: selected, not
multiplied by a carry of 0, so a NaN state of one sequence never enters the next (a decay that
underflows to 0 inside a sequence still multiplies, as the sequential scan does).
"""

import triton
import triton.language as tl

RESET = tl.constexpr(-1.0)  # a carry no decay exp(L) can equal


@triton.jit
def state_passing_kernel(states_ptr, carry_ptr, nchunks, PN, TO_RIGHT: tl.constexpr,
                         BLOCK: tl.constexpr):
    pid_bh = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    # 64-bit pointer walk: nchunks * P * N may exceed 2^31
    first = pid_bh * nchunks
    if TO_RIGHT:
        step = 1
    else:
        first = first + nchunks - 1
        step = -1
    state_ptrs = states_ptr + first * PN + offs
    carry_ptrs = carry_ptr + first
    running = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(0, nchunks):
        local = tl.load(state_ptrs, mask=mask, other=0.0)
        tl.store(state_ptrs, running, mask=mask)
        carry = tl.load(carry_ptrs)
        running = tl.where(carry == RESET, local, local + carry * running)
        state_ptrs += step * PN
        carry_ptrs += step
