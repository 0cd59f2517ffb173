"""transformers' VideoMAE behind the interface the pipeline's parity code calls on
`pt_reference`: official-layout video [B, C, T, H, W] in (transformers takes [B, T, C, H, W])."""
from __future__ import annotations

import torch
from torch import nn


class TransformersReference(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.backbone = getattr(model, "videomae", model)
        self.pretraining = type(model).__name__ == "VideoMAEForPreTraining"

    @staticmethod
    def _pixels(x):
        return x.permute(0, 2, 1, 3, 4)

    def forward(self, x, mask=None):
        if self.pretraining:
            return self.model(self._pixels(x), bool_masked_pos=mask).logits
        out = self.model(self._pixels(x))
        return out.logits if hasattr(out, "logits") else out.last_hidden_state

    def encode(self, x, visible=None) -> list[torch.Tensor]:
        """The backbone's last hidden state (after its layernorm, where it has one), every token visible."""
        return [self.backbone(self._pixels(x)).last_hidden_state]

    @property
    def localisable(self) -> bool:
        return not self.pretraining

    def hidden_states(self, x) -> list[torch.Tensor]:
        """Tokens after the embedding and after each layer, as pt_reference lists them."""
        states = []
        hooks = [self.backbone.embeddings.register_forward_hook(lambda m, i, o: states.append(o))]
        hooks += [layer.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o))
                  for layer in self.backbone.encoder.layer]
        try:
            self.backbone(self._pixels(x))
        finally:
            for h in hooks:
                h.remove()
        return states
