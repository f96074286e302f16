"""Compile both kernels to a cubin for an H100 (sm_90) without a GPU; run with TRITON_INTERPRET unset.

The interpreter runs kernels as Python and never sees the compiler; this catches what only
compilation rejects (types of loop-carried values, scalar branches, pointer arithmetic).
"""

from __future__ import annotations

import triton
from mdm_plugin_triton_loss import kernels
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SCALARS = {name: "i32" for name in ("seq_len", "stride_b", "stride_l", "vocab_size", "mask_id", "pad_id")}


def main() -> None:
    # bf16 logits exercise the dtype conversions that fp32 skips.
    forward = {
        "logits_ptr": "*bf16",
        "rows_ptr": "*i64",
        "targets_ptr": "*i64",
        "weights_ptr": "*fp32",
        "lse_ptr": "*fp32",
        "wnll_ptr": "*fp32",
        **SCALARS,
        "BLOCK_V": "constexpr",
    }
    backward = {
        "logits_ptr": "*bf16",
        "grad_ptr": "*bf16",
        "loss_mask_ptr": "*u8",
        "targets_ptr": "*i64",
        "weights_ptr": "*fp32",
        "lse_ptr": "*fp32",
        "grad_out_ptr": "*fp32",
        **SCALARS,
        "BLOCK_V": "constexpr",
    }
    block = kernels.MAX_BLOCK_V
    for fn, signature in ((kernels._subs_nll_forward, forward), (kernels._subs_nll_backward, backward)):
        source = ASTSource(fn=fn, signature=signature, constexprs={"BLOCK_V": block})
        options = {"num_warps": kernels._num_warps(block)}
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        assert compiled.asm["cubin"], f"{fn.__name__} produced no cubin"
    print("compiled for sm_90")


if __name__ == "__main__":
    main()
