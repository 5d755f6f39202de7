"""Stand-in for torch_npu.contrib inside npu-sim runs (only transfer_to_npu is provided)."""
