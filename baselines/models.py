"""The one model builder: encoder -> recurrent core -> head.

Every registered model is a preset of ``ModelConfig`` (timm style: a variant is a
few switch values, never a copied class), so an ablation is an override such as
``--set model.hidden_size=256``. The encoder and head come from the task's
declaration: token tasks get an embedding, real-valued inputs go straight into the
cell's input projection (which already is the linear encoder: a second linear map
in front of it would only change the optimisation, not the model class); the head
reads the last valid step (``target="last"``) or every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from baselines.cells import CudnnCore, LoopCore, State
from suite.registry import param


@dataclass
class ModelConfig:
    """Switches shared by every model; presets in ``baselines/zoo.py`` set them."""

    cell: str = param("lstm", "recurrent cell", choices=("rnn", "gru", "lstm"))
    impl: str = param("cudnn", "implementation: cuDNN module or explicit time loop",
                      choices=("cudnn", "loop"))
    nonlinearity: str = param("tanh", "rnn cell nonlinearity", choices=("tanh", "relu"))
    hidden_size: int = param(128, "hidden units per layer", min=1, max=65536)
    num_layers: int = param(1, "stacked recurrent layers", min=1, max=16)
    embed_size: int | None = param(None, "embedding size for token inputs (default: hidden_size)", min=1)
    init: str = param("default", "init: PyTorch default; identity (IRNN: W_hh = I, W_ih ~ N(0, 0.001), "
                      "biases 0); orthogonal (each gate's W_hh block); cooijmans (every weight matrix "
                      "orthogonal, recurrent gates as one, biases 0: their PTB/text8 code); cooijmans-id "
                      "(and the candidate's W_hh block = I: their MNIST code)",
                      choices=("default", "identity", "orthogonal", "cooijmans", "cooijmans-id"))
    forget_bias: float | None = param(None, "LSTM forget-gate bias at init (None: PyTorch default)")

    def inert(self) -> set[str]:
        """The switches that change nothing in this configuration: ``baselines.resolve``
        sets them to their defaults, so that two configurations that build the same model
        have one run id (a sweep over such a switch is one run, not an ablation)."""
        out = set()
        if self.cell != "rnn":
            out.add("nonlinearity")  # GRU and LSTM gates have their own
        if self.cell != "lstm":
            out.add("forget_bias")
        return out


@dataclass
class ModelOutput:
    """``y``: (B, O) or (B, T, O); ``hidden``: top-layer (B, T, H); ``state``: final state."""

    y: Tensor
    hidden: Tensor
    state: State


class RecurrentModel(nn.Module):
    """Encoder, recurrent core and head, configured by a ``ModelConfig``."""

    def __init__(self, cfg: ModelConfig, *, output_size: int, input_size: int | None = None,
                 vocab_size: int | None = None, target: str = "last") -> None:
        super().__init__()
        if (input_size is None) == (vocab_size is None):
            raise ValueError("give exactly one of input_size (real inputs) or vocab_size (tokens)")
        self.cfg, self.target = cfg, target
        if vocab_size is not None:
            embed = cfg.embed_size or cfg.hidden_size
            self.encoder: nn.Module = nn.Embedding(vocab_size, embed)
            core_in = embed
        else:
            self.encoder = nn.Identity()
            core_in = input_size  # type: ignore[assignment]
        self.core = self.make_core(cfg, core_in)
        self.head = nn.Linear(cfg.hidden_size, output_size)
        self.init_recurrent(cfg)

    @staticmethod
    def make_core(cfg: ModelConfig, input_size: int) -> nn.Module:
        core_cls = CudnnCore if cfg.impl == "cudnn" else LoopCore
        return core_cls(cfg.cell, input_size, cfg.hidden_size, cfg.num_layers, cfg.nonlinearity)

    @torch.no_grad()
    def init_recurrent(self, cfg: ModelConfig) -> None:
        """Apply the preset's initialisation on top of PyTorch's default."""
        H = cfg.hidden_size
        if cfg.init.startswith("cooijmans"):
            self._init_cooijmans(cfg)
        for name, p in self.core.rnn.named_parameters():  # the cell's own weights, not norm layers
            if "weight_hh" in name and cfg.init in ("identity", "orthogonal"):
                for k in range(p.shape[0] // H):  # one H×H block per gate
                    block = p[k * H:(k + 1) * H]
                    if cfg.init == "identity":
                        block.copy_(torch.eye(H))
                    else:
                        nn.init.orthogonal_(block)
            if cfg.init == "identity" and "bias" in name:
                p.zero_()  # IRNN: zero biases
            if cfg.init == "identity" and "weight_ih" in name:
                p.normal_(0.0, 0.001)  # IRNN input weights ~ N(0, 0.001), Le et al. 2015
            if cfg.forget_bias is not None and cfg.cell == "lstm" and "bias" in name:
                # The two bias vectors add up; put the whole forget bias in b_ih.
                p[H:2 * H] = cfg.forget_bias if "bias_ih" in name else 0.0

    def _init_cooijmans(self, cfg: ModelConfig) -> None:
        """Cooijmans et al., "Recurrent Batch Normalization" (2017), public code: every
        weight matrix orthogonal (the recurrent one as a whole, its H rows orthonormal
        over the gates' kH columns, in their layout), every bias zero (the LSTM's forget
        bias is ``forget_bias``'s); ``cooijmans-id`` makes the candidate's block of W_hh
        (the RNN's whole W_hh) the identity and the other gates' blocks one orthogonal
        matrix of their own, as their sequential-MNIST code does. A token
        model's embedding keeps PyTorch's N(0, 1): their one-hot inputs had none."""
        candidate = {"rnn": 0, "gru": 2, "lstm": 2}[cfg.cell]  # PyTorch's gate order: (r, z, n), (i, f, g, o)
        H = cfg.hidden_size
        for name, p in [*self.core.rnn.named_parameters(), *self.head.named_parameters()]:
            if "bias" in name:
                p.zero_()
            elif "weight_hh" in name and cfg.init == "cooijmans-id":
                rest = torch.empty(p.shape[0] - H, H)
                if len(rest):
                    nn.init.orthogonal_(rest)
                p.copy_(torch.cat([rest[:candidate * H], torch.eye(H), rest[candidate * H:]]))
            else:  # orthonormal along the shorter side; their matrices are ours transposed
                nn.init.orthogonal_(p)

    def initial_state(self, x: Tensor) -> State:
        """The state the core starts from when none is given (None: zeros)."""
        return None

    def features(self, hidden: Tensor, lengths: Tensor | None) -> Tensor:
        """What the head reads from the top layer's (B, T, H) outputs (here: them)."""
        return hidden

    def run(self, x: Tensor, lengths: Tensor | None = None, state: State = None,
            perturb: Tensor | None = None, offset: int = 0) -> ModelOutput:
        """Outputs, top-layer hidden states and final state; from ``state`` where given
        (a continued sequence, whose steps here are its steps ``offset``.. : the per-step
        statistics of a batch-normalized model follow them, ``NormModel.run``)."""
        inp = self.encoder(x)
        if state is None:
            state = self.initial_state(inp)
        hidden, state = self.core(inp, state, perturb=perturb, lengths=lengths)
        return ModelOutput(self.readout(hidden, lengths), hidden, state)

    def readout(self, hidden: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The head's output from the top layer's (B, T, H) outputs: every step's, or the
        last valid step's."""
        feats = self.features(hidden, lengths)
        if self.target == "every":
            return self.head(feats)
        if lengths is None:
            last = feats[:, -1]
        else:
            idx = (lengths.to(feats.device).long() - 1).view(-1, 1, 1).expand(-1, 1, feats.shape[-1])
            last = feats.gather(1, idx).squeeze(1)
        return self.head(last)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.run(x, lengths).y


def model_params(model: nn.Module) -> dict[str, Any]:
    """Parameter counts by group, for the run record."""
    return {"n_params": sum(p.numel() for p in model.parameters())}
