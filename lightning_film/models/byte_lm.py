"""``ByteLM``: a causal byte-level language model whose byte embedding is nibble/acc-modulated.

The network is :class:`~lightning_film.models.byte_net.ByteNet`, given as ``net`` (``ByteLM(ByteNet(...))``;
``model.init_args.net`` in a config) and held as ``model.net``, a plain ``nn.Module`` that export
and quantization take:

    x = DualModulatedEmbedding(bytes, nibbles, acc) + pos      # (B, N, D)
    h = Transformer(x, Conditioning(per_token=c))              # (B, N, D), causal
    logits = head(h)                                           # (B, N, 256)

this module adds the data hooks, the loss and bits-per-byte metrics, the optimizer and sampling.
Checkpoints written before the network became ``model.net`` (keys ``embed.*``, ``transformer.*``,
``head.*``, ``pos``; its arguments flat beside ``lr``) are converted when loaded, with one info line.

Variants (``net.variant``): ``byte`` (plain byte embedding, the baseline), ``nibble`` and
``nibble_acc`` (see :mod:`lightning_film.nn.embedding`). ``block_conditioner`` optionally lets the
same per-token signal c condition every block too (``"none"``: unconditioned blocks).

Positions are learned absolute embeddings over ``seq_len`` (nanoGPT's): training windows start at
arbitrary offsets, so a position says "how much context there is", which is also what a
truncated inference window means. Generation keeps a key/value cache while the document fits the
context (each new byte costs one byte's forward); past ``seq_len`` bytes the window slides, every
position changes, and each new byte re-runs the last ``seq_len`` bytes, exactly as without a cache.

The rare-pair table of the dead-energy accumulator is a buffer (``rare_table``, bool (16, 16)),
filled from the DataModule in :meth:`ByteLM.setup`, so a checkpoint carries it and generation
computes the accumulator exactly as training did. If a checkpoint's table differs from the data's
(other sources, another ``rare_fraction``), **the checkpoint wins**: a warning is issued and the
data's ``acc`` is recomputed with the checkpoint's table, since that is what the weights learned.

Metrics are exact per byte: summed nats and counted targets per source (a torchmetrics
``Metric`` with ``sum`` reduction, so they also reduce correctly across DDP ranks), logged as
``{val,test}/bpb`` and ``{val,test}/bpb/<source>``.

Legend: B batch, N bytes per window (``seq_len``), D width (``dim``), Dc conditioning width,
S sources, V = 256 byte values.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_film.checkpoints import check_weights_fit, nest_checkpoint
from lightning_film.data.nibbles import build_nibble_scheme
from lightning_film.data.stream import ByteStream
from lightning_film.errors import check_ints
from lightning_film.metrics.bits_per_byte import BitsPerByte, source_log_names
from lightning_film.models.byte_net import NET_MODULES, ByteNet
from lightning_film.models.checkpoint_activation import adopt_checkpoint_activation
from lightning_film.models.net_module import NetModule, network
from lightning_film.models.optim import adamw_warmup_cosine, check_schedule, clip_gradients
from lightning_film.models.print_samples import PrintSamples
from lightning_film.models.throughput import TrainThroughput
from lightning_film.nn.diffusion import drawn_on
from lightning_film.nn.transformer import TransformerCache

__all__ = ["BitsPerByte", "ByteLM", "ByteNet", "ByteStream", "source_log_names"]

_LN2 = math.log(2.0)


class ByteLM(NetModule):
    """Trains and samples :class:`ByteNet` (``self.net``), a causal byte LM with a nibble/acc-modulated
    byte embedding (see the module docstring).

    Args:
        net: the network (its arguments: :class:`ByteNet`); a checkpoint stores them as a mapping
            (``hparams.net``), which is built into one here.
        nibble_scheme: the nibble scheme; must be the DataModule's (checked in ``setup``).
        lr: peak AdamW learning rate.
        weight_decay: AdamW decay of matrices (not of biases, norms, embeddings or positions).
        warmup_steps: linear warmup steps.
        max_lr_steps: steps of the cosine decay to ``min_lr_ratio * lr`` (then constant);
            ``None``: the trainer's total steps.
        min_lr_ratio: the learning rate at the end of the cosine, as a fraction of ``lr``.
        max_new_bytes: bytes ``predict`` samples after each prompt.
        temperature: sampling temperature of ``predict`` (0: greedy).
        top_k: ``predict`` samples among the ``top_k`` likeliest bytes (``None``: all 256).
    """

    def __init__(
        self,
        net: ByteNet,
        nibble_scheme: str = "utf8",
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        max_lr_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        max_new_bytes: int = 256,
        temperature: float = 0.8,
        top_k: int | None = None,
    ) -> None:
        super().__init__()
        check_ints("ByteLM", warmup_steps=(warmup_steps, 0), max_new_bytes=(max_new_bytes, 0))
        _check_sampling(temperature, top_k)
        if max_lr_steps is not None:
            check_ints("ByteLM", max_lr_steps=(max_lr_steps, 1))
        check_schedule("ByteLM", lr, weight_decay, min_lr_ratio)
        build_nibble_scheme(nibble_scheme)  # an unknown scheme fails here, naming the registered ones
        self.net: ByteNet = network(net, ByteNet, "ByteLM")
        self.save_hyperparameters(ignore=["net"])
        self.hparams["net"] = self.net.config  # plain values: a checkpoint never names the network's code
        self.register_buffer("rare_table", torch.zeros(16, 16, dtype=torch.bool))
        self.register_buffer("rare_table_known", torch.tensor(False))
        self.source_names: list[str] = []

    # -- the model ----------------------------------------------------------------------------
    def forward(
        self,
        byte_ids: Tensor,
        nibble_ids: Tensor | None = None,
        acc_ids: Tensor | None = None,
        cache: TransformerCache | None = None,
    ) -> Tensor:
        """byte_ids, nibble_ids, acc_ids: (B, N <= seq_len) long -> (B, N, V) next-byte logits
        (:meth:`ByteNet.forward`; ``cache`` from :meth:`new_cache`)."""
        return self.net(byte_ids, nibble_ids, acc_ids, cache)  # (B, N, V)

    def new_cache(self) -> TransformerCache:
        """An empty key/value cache for :meth:`forward`, holding up to ``seq_len`` bytes."""
        return self.net.new_cache()

    def nll(self, batch: dict[str, Tensor]) -> Tensor:
        """A ByteDataModule batch -> (B, N) fp32 nats of each target (padding included; mask it)."""
        inputs, targets = batch["bytes"][:, :-1], batch["bytes"][:, 1:]  # (B, N), (B, N)
        logits = self(inputs, batch.get("nibbles"), batch.get("acc"))  # (B, N, V), bf16 under bf16-mixed
        # log-softmax over 256 values in fp32: bf16 logits would cost the loss (and bpb) its low bits
        return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, N)

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Fit the data to the model: its window, its nibble scheme, its rare table; the metrics."""
        dm = self.trainer.datamodule
        needed = ("rare_table", "source_names", "use_rare_table")
        if dm is None or any(getattr(dm, name, None) is None for name in needed):
            raise ValueError(
                "ByteLM needs a ByteDataModule (a DataModule with rare_table, source_names and use_rare_table, "
                "set up); "
                f"got {type(dm).__name__ if dm is not None else 'no DataModule'}"
            )
        if hasattr(dm, "connect"):
            dm.connect(max_seq_len=self.net.seq_len)
        elif getattr(dm, "seq_len", 0) > self.net.seq_len:
            raise ValueError(f"data seq_len={dm.seq_len} is longer than the model's seq_len={self.net.seq_len}")
        theirs = getattr(dm, "hparams", {}).get("nibble_scheme")
        if theirs is not None and theirs != self.hparams.nibble_scheme:
            raise ValueError(
                f"the data's nibble_scheme={theirs!r} differs from the model's nibble_scheme="
                f"{self.hparams.nibble_scheme!r}; set both to the same scheme"
            )
        table = dm.rare_table.to(torch.bool).reshape(16, 16)
        if bool(self.rare_table_known) and not torch.equal(self.rare_table.cpu(), table.cpu()):
            self._checkpoint_wins(self.rare_table)  # a model loaded before fit/test: its table wins
        else:
            self.rare_table.copy_(table)
            self.rare_table_known.fill_(True)
        self.source_names = source_log_names(list(dm.source_names))
        for split in ("val", "test"):
            setattr(self, f"{split}_bpb", BitsPerByte(len(self.source_names)))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Old layouts are renamed (``embed.*`` -> ``net.embed.*``); the checkpoint's activation and
        rare table win over the model's and the data's (the weights learned with them)."""
        # Lightning loads the state_dict (and EMA its current_model_state) after this hook
        if nest_checkpoint(checkpoint, NET_MODULES):
            rank_zero_info("ByteLM: this checkpoint predates ByteLM.net; its network keys were renamed net.*")
        check_weights_fit(self, checkpoint, self.strict_loading)
        adopt_checkpoint_activation(self, checkpoint)
        state = checkpoint.get("state_dict", {})
        saved, known = state.get("rare_table"), state.get("rare_table_known")
        if saved is None or known is None or not bool(known) or self._trainer is None:
            return
        if bool(self.rare_table_known) and not torch.equal(saved.cpu().bool(), self.rare_table.cpu()):
            self._checkpoint_wins(saved)

    def _checkpoint_wins(self, table: Tensor) -> None:
        dm = self.trainer.datamodule
        warnings.warn(
            "ByteLM: the checkpoint's rare-pair table differs from the one the DataModule computed "
            f"({int((table.cpu().bool() != dm.rare_table.cpu().bool()).sum())} of 256 pairs); the checkpoint's "
            "wins (its weights learned with it), and the data's acc is recomputed with it",
            stacklevel=2,
        )
        dm.use_rare_table(table)
        self.rare_table.copy_(dm.rare_table)
        self.rare_table_known.fill_(True)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        mask = batch["mask"]  # (B, N)
        loss = (self.nll(batch) * mask).sum() / mask.sum().clamp_min(1)  # nats per real target
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bpb", loss / _LN2)
        return loss

    # no FLOP count per batch (the benchmarks measure FLOPs): ThroughputMonitor logs no FLOP rate
    flops_per_batch: int | None = None

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        getattr(self, f"{split}_bpb").update(self.nll(batch), batch["mask"], batch["source"])

    def _log_split(self, split: str) -> None:
        metric: BitsPerByte = getattr(self, f"{split}_bpb")
        total, per_source = metric.compute()  # already reduced across ranks
        self.log(f"{split}/bpb", total.float(), prog_bar=True, sync_dist=False)
        # torchmetrics squeezes a one-element result to a scalar: one source must stay a list
        for name, value in zip(self.source_names, per_source.reshape(-1).tolist()):
            if not math.isnan(value):
                self.log(f"{split}/bpb/{name}", value)
        metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: list[bytes], batch_idx: int) -> list[dict[str, bytes]]:
        """Prompts (raw bytes) -> ``[{"prompt": ..., "sample": ...}]``, sampled with the model's
        ``max_new_bytes``, ``temperature`` and ``top_k`` (seeded by ``seed_everything``)."""
        hp = self.hparams
        return [
            {"prompt": bytes(p), "sample": self.generate(p, hp.max_new_bytes, hp.temperature, hp.top_k)} for p in batch
        ]

    def configure_callbacks(self) -> list[Callback]:
        # train/device/items_per_sec is tokens per second (every position of the batch, as the step computes)
        throughput = TrainThroughput(lambda batch: batch["mask"].shape[0], lambda batch: batch["mask"].numel())
        # `lightning-film predict` prints the samples, unless the user configured a printer.
        if any(isinstance(c, PrintSamples) for c in self.trainer.callbacks):
            return [throughput]
        return [throughput, PrintSamples()]

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # bf16-mixed with fused AdamW too

    def configure_optimizers(self) -> dict:
        no_decay = [p for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()]
        pos = [] if self.net.pos is None else [self.net.pos]
        return adamw_warmup_cosine(self, no_decay + pos, betas=(0.9, 0.95))

    # -- sampling -----------------------------------------------------------------------------
    def byte_stream(self, prompt: bytes | bytearray | str = b"") -> ByteStream:
        """A :class:`ByteStream` with this model's nibble scheme and rare table, holding ``prompt``."""
        if not bool(self.rare_table_known):
            raise RuntimeError(
                "ByteLM has no rare-pair table yet: train it with a ByteDataModule, or load a checkpoint"
            )
        stream = ByteStream(self.hparams.nibble_scheme, self.rare_table)
        stream.extend(prompt.encode("utf-8") if isinstance(prompt, str) else prompt)
        return stream

    @torch.no_grad()
    def sample(
        self,
        stream: ByteStream,
        max_new_bytes: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> None:
        """Extend ``stream`` by ``max_new_bytes`` sampled bytes (context: its last ``seq_len`` bytes).

        ``use_cache``: decode with a key/value cache while the stream fits the context (the same
        bytes as without, up to float rounding; see the module docstring).
        """
        check_ints("ByteLM", max_new_bytes=(max_new_bytes, 0))
        _check_sampling(temperature, top_k)
        if not len(stream):
            raise ValueError("ByteLM.sample: the prompt is empty; give at least one byte (e.g. b'\\n')")
        was_training = self.training
        self.eval()
        seq_len = self.net.seq_len
        cache = None
        try:
            for _ in range(max_new_bytes):
                if use_cache and len(stream) <= seq_len:
                    # the whole stream is the window: feed only what the cache has not seen
                    if cache is None:
                        cache = self.new_cache()
                    ids = (t.to(self.device) for t in stream.window(len(stream) - cache.length))
                    logits = self(*ids, cache=cache)[0, -1].float()  # (V,)
                else:
                    byte_ids, nibble_ids, acc_ids = (t.to(self.device) for t in stream.window(seq_len))
                    logits = self(byte_ids, nibble_ids, acc_ids)[0, -1].float()  # (V,)
                if temperature == 0:
                    nxt = int(logits.argmax())
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.numel():
                        kth = torch.topk(logits, top_k).values[-1]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    # drawn where the generator lives (the CPU without one): a CUDA generator samples on its GPU
                    probs = torch.softmax(logits, dim=-1).to(drawn_on(generator))
                    nxt = int(torch.multinomial(probs, 1, generator=generator))
                stream.extend(bytes([nxt]))
        finally:
            self.train(was_training)

    def generate(
        self,
        prompt: bytes | bytearray | str,
        max_new_bytes: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> bytes:
        """Sample ``max_new_bytes`` bytes after ``prompt`` (raw bytes, any values; a str is UTF-8
        encoded) and return them (the prompt excluded). ``temperature=0`` is greedy; ``use_cache``
        decodes with a key/value cache (see :meth:`sample`)."""
        stream = self.byte_stream(prompt)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        start = len(stream)
        self.sample(stream, max_new_bytes, temperature, top_k, generator, use_cache)
        return stream.bytes[start:].numpy().tobytes()


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"ByteLM: temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None:
        check_ints("ByteLM", top_k=(top_k, 1))
