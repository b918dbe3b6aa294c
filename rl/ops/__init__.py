"""Fused ops on the trainer's hot path (docs/fused_ops.md): log-probs / entropy and the token-mean policy
loss straight from final hidden states and the LM head, without materialising (N, V) logits.

    from rl.ops import token_logprobs_entropy, fused_policy_loss

Each op has a Triton kernel (CUDA) and a pure-torch twin (CPU path and oracle); impl="auto" picks.
The math (forward and backward) is in docs/fused_ops.md, "The math".
"""

from rl.ops.fused_loss import fused_policy_loss
from rl.ops.logprob import token_logprobs_entropy

__all__ = ["fused_policy_loss", "token_logprobs_entropy"]
